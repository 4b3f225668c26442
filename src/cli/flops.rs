//! FLOps' two historic command lines, rewritten to the named commands before clap parses them:
//! the manager's `<registry> <project> <mqtt> <observer> … fl_actors|trained_model …` and the
//! first builder's positional seed form.

use super::Cli;

/// Upstream's positional form, `<repo_url> <registry_url> <project_id> <mqtt_ip> <mqtt_port>
/// <observer_ip>`, rewritten to `build`. Upstream pushed with TLS verification off, so the
/// registry host is treated as insecure (self-signed or plain HTTP) here too.
pub fn seed_args(args: Vec<String>) -> Vec<String> {
    let subcommand = <Cli as clap::CommandFactory>::command()
        .get_subcommands()
        .any(|c| c.get_name() == args[1])
        || args[1] == "help";
    if args.len() == 7 && !args[1].starts_with('-') && !subcommand {
        let host = flops_image_builder::repo::naming::registry_host(&args[2]);
        let mut v: Vec<String> = vec![
            args[0].clone(),
            "build".into(),
            args[1].clone(),
            "--registry".into(),
            args[2].clone(),
        ];
        v.extend([
            "--project-id".into(),
            args[3].clone(),
            "--mqtt".into(),
            format!("{}:{}", args[4], args[5]),
            "--observer".into(),
            args[6].clone(),
        ]);
        v.extend(["--insecure-registry".into(), host]);
        return v;
    }
    args
}

/// Today's FLOps manager form, rewritten to the named commands:
/// `<registry_url> <flops_project_id> <mqtt_ip> <project_observer_ip>
/// [--supported_platforms=P1[,P2]] [--deactivate-notifications] <plan> <plan args...>` with
/// plan `fl_actors <repo_url> <ml_model_flavor> [--use-devel-base-images]` (→ `build
/// --aggregator`) or `trained_model <customer_id> <tracking_server_uri> <run_id>` (→ `model`).
/// As upstream pushed with TLS verification off, the registry host is `--insecure-registry`.
/// `Err` is a usage message for a form that names a plan but lacks its arguments.
pub fn manager_args(args: &[String]) -> Option<Result<Vec<String>, String>> {
    let plan_at = args
        .iter()
        .position(|a| a == "fl_actors" || a == "trained_model")?;
    let mut positional = Vec::new();
    let mut platforms = None;
    let mut quiet = false;
    let mut extra = Vec::new();
    let mut i = 1;
    while i < args.len() {
        let a = &args[i];
        if let Some(p) = a.strip_prefix("--supported_platforms=") {
            platforms = Some(p.to_string());
        } else if a == "--supported_platforms" {
            i += 1;
            platforms = args.get(i).cloned();
        } else if a == "--deactivate-notifications" {
            quiet = true;
        } else if a == "--use-devel-base-images" {
            extra.push(a.clone());
        } else if i != plan_at {
            positional.push(a.clone());
        }
        i += 1;
    }
    let plan = args[plan_at].as_str();
    let want = if plan == "fl_actors" { 6 } else { 7 };
    if positional.len() != want {
        return Some(Err(format!(
            "usage: <registry_url> <flops_project_id> <mqtt_ip> <project_observer_ip> [--supported_platforms=P1[,P2]] [--deactivate-notifications] {}",
            if plan == "fl_actors" {
                "fl_actors <repo_url> <ml_model_flavor> [--use-devel-base-images]"
            } else {
                "trained_model <customer_id> <tracking_server_uri> <run_id>"
            }
        )));
    }
    let [reg, project, mqtt, observer] = [0, 1, 2, 3].map(|k| positional[k].clone());
    let host = flops_image_builder::repo::naming::registry_host(&reg);
    let mut v: Vec<String> = vec![args[0].clone()];
    if plan == "fl_actors" {
        v.extend([
            "build".into(),
            "--aggregator".into(),
            positional[4].clone(),
            "--model-flavor".into(),
            positional[5].clone(),
        ]);
    } else {
        v.extend([
            "model".into(),
            "--customer-id".into(),
            positional[4].clone(),
            "--tracking-uri".into(),
            positional[5].clone(),
            "--run-id".into(),
            positional[6].clone(),
        ]);
    }
    v.extend([
        "--registry".into(),
        reg,
        "--insecure-registry".into(),
        host,
        "--project-id".into(),
        project,
        "--mqtt".into(),
        mqtt,
        "--observer".into(),
        observer,
    ]);
    if let Some(p) = platforms {
        v.extend(["--platform".into(), p]);
    }
    if quiet {
        v.push("--no-notify".into());
    }
    v.extend(extra);
    Some(Ok(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Command;
    use clap::Parser;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn managers_fl_actors_form() {
        let got = manager_args(&args("main.py http://reg:5073 p1 10.0.0.1 10.0.0.2 --supported_platforms=linux/amd64,linux/arm64 fl_actors https://github.com/O/R sklearn --use-devel-base-images")).unwrap().unwrap();
        assert_eq!(got, args("main.py build --aggregator https://github.com/O/R --model-flavor sklearn --registry http://reg:5073 --insecure-registry reg:5073 --project-id p1 --mqtt 10.0.0.1 --observer 10.0.0.2 --platform linux/amd64,linux/arm64 --use-devel-base-images"));
        let cli = Cli::try_parse_from(got).unwrap();
        assert!(
            matches!(cli.command, Command::Build(b) if b.aggregator && b.use_devel_base_images)
        );
        let quiet = manager_args(&args(
            "m r p q o --deactivate-notifications fl_actors u keras",
        ))
        .unwrap()
        .unwrap();
        assert!(quiet.contains(&"--no-notify".to_string()));
    }

    #[test]
    fn managers_trained_model_form() {
        let got = manager_args(&args("main.py 192.168.1.5:5073 p1 10.0.0.1 10.0.0.2 --supported_platforms linux/arm64 trained_model Customer-1 http://10.0.0.3:7027 0a1b2c")).unwrap().unwrap();
        assert_eq!(got, args("main.py model --customer-id Customer-1 --tracking-uri http://10.0.0.3:7027 --run-id 0a1b2c --registry 192.168.1.5:5073 --insecure-registry 192.168.1.5:5073 --project-id p1 --mqtt 10.0.0.1 --observer 10.0.0.2 --platform linux/arm64"));
        assert!(manager_args(&args("main.py r p q trained_model c u"))
            .unwrap()
            .is_err());
        assert!(manager_args(&args("main.py build . --registry r")).is_none());
    }
}
