//! Compiled packages and the NumPy ABI: a wheel built against NumPy 1.x cannot run with
//! NumPy 2 (it fails at import, or later, e.g. torch's `RuntimeError: Numpy is not available`
//! from `torch.from_numpy`), and old wheels do not say so in their metadata (torch 2.1.1
//! requires plain `numpy`). A lock must never pair them: the `numpy-abi` rule adds `numpy<2`.
//! A few pure-Python packages break on NumPy 2 the same way (their code, not an ABI): listed
//! too, so old versions pair with NumPy 1 instead of being refused.

use pep508_rs::pep440_rs::Version;
use std::str::FromStr;

/// (package, first version that runs with NumPy 2, source): for compiled packages the first
/// built against it. Packages not listed are taken to be fine: most pure-Python ones, and
/// compiled ones whose metadata already bounds NumPy.
pub const NUMPY2_FIRST: &[(&str, &str, &str)] = &[
    (
        "torch",
        "2.3.0",
        "PyTorch 2.3 release notes; numpy/numpy#26191",
    ),
    ("torchvision", "0.18.0", "released with torch 2.3"),
    ("torchaudio", "2.3.0", "released with torch 2.3"),
    (
        "tensorflow",
        "2.18.0",
        "TensorFlow 2.18 release notes; numpy/numpy#26191",
    ),
    ("tensorflow-cpu", "2.18.0", "as tensorflow"),
    (
        "pandas",
        "2.2.2",
        "pandas 2.2.2 release notes; numpy/numpy#26191",
    ),
    (
        "scipy",
        "1.13.0",
        "SciPy 1.13.0 release notes; numpy/numpy#26191",
    ),
    (
        "scikit-learn",
        "1.4.2",
        "scikit-learn 1.4.2 release notes; numpy/numpy#26191",
    ),
    (
        "matplotlib",
        "3.8.4",
        "matplotlib 3.8.4 release notes; numpy/numpy#26191",
    ),
    (
        "pyarrow",
        "16.0.0",
        "Apache Arrow 16.0.0 release notes; numpy/numpy#26191",
    ),
    (
        "h5py",
        "3.11.0",
        "h5py 3.11 release notes; numpy/numpy#26191",
    ),
    (
        "numba",
        "0.60.0",
        "Numba 0.60.0 release notes; numpy/numpy#26191",
    ),
    (
        "numexpr",
        "2.10.0",
        "numexpr 2.10.0 release notes; numpy/numpy#26191",
    ),
    (
        "opencv-python",
        "4.10.0.84",
        "opencv-python 4.10.0.84 release notes; numpy/numpy#26191",
    ),
    ("opencv-python-headless", "4.10.0.84", "as opencv-python"),
    (
        "statsmodels",
        "0.14.2",
        "statsmodels 0.14.2 release notes; numpy/numpy#26191",
    ),
    (
        "shapely",
        "2.0.4",
        "Shapely 2.0.4 release notes; numpy/numpy#26191",
    ),
    // Pure Python: before 2.21 its numpy formatting calls np.array(copy=False), an error on
    // NumPy 2, and its metadata does not bound NumPy (checked: 2.19.2 and 2.20.0 fail).
    (
        "datasets",
        "2.21.0",
        "datasets 2.21.0; huggingface/datasets#6976, #6991",
    ),
];
// Checked against numpy/numpy#26191 ("Ecosystem compatibility with numpy 2.0"), which
// tracks the first compatible release of each project.

/// The pure-Python packages of NUMPY2_FIRST: their code, not an ABI, needs NumPy 1.x.
const PURE_PYTHON: &[&str] = &["datasets"];

/// The reason a `name==version` needs NumPy 1.x, if it does.
pub fn needs_numpy1(name: &str, version: &str) -> Option<String> {
    let norm = crate::spec::imports::normalize(name);
    let (_, first, source) = NUMPY2_FIRST
        .iter()
        .find(|(n, _, _)| crate::spec::imports::normalize(n) == norm)?;
    let v = Version::from_str(version).ok()?;
    let first_v = Version::from_str(first).ok()?;
    let what = if PURE_PYTHON.contains(&norm.as_str()) {
        "calls NumPy 1.x-only APIs"
    } else {
        "is built against NumPy 1.x"
    };
    (v < first_v).then(|| {
        format!("{name} {version} {what} and cannot run with NumPy 2 (NumPy 2 from {name} {first}: {source})")
    })
}

/// Whether `version` is NumPy 2 or later.
pub fn is_numpy2(version: &str) -> bool {
    Version::from_str(version).is_ok_and(|v| v.release().first().is_some_and(|m| *m >= 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_compiled_packages_need_numpy1() {
        assert!(needs_numpy1("torch", "2.1.1").is_some());
        assert!(needs_numpy1("torch", "2.3.0").is_none());
        assert!(needs_numpy1("Scikit_Learn", "1.3.2").is_some());
        assert!(needs_numpy1("tensorflow", "2.15.1").is_some());
        assert!(needs_numpy1("requests", "2.0").is_none());
        let datasets = needs_numpy1("datasets", "2.19.2").unwrap();
        assert!(
            datasets.starts_with("datasets 2.19.2 calls NumPy 1.x-only APIs"),
            "{datasets}"
        );
        assert!(needs_numpy1("datasets", "2.21.0").is_none());
        assert!(is_numpy2("2.4.6") && !is_numpy2("1.26.4"));
    }
}
