//! Plan trained_model (issue 14).
