//! The Helm chart (`charts/tortie`) and the rendered manifest (`deploy/tortie.yaml`).
//!
//! Without a cluster: the chart's CRDs are byte-for-byte the generated ones, `helm lint`
//! passes, default and non-default values render into what the binaries expect (explicit
//! commands, the environment contract, host paths at the same path, one privileged init
//! step, no Secret access), bad values fail naming the value, and `deploy/tortie.yaml` is
//! what `charts/render.sh` makes today. These need the `helm` binary of the control-plane
//! build and are skipped without it.
//!
//! On the local cluster (root and the control-plane binaries; skipped otherwise unless
//! TORTIE_E2E_REQUIRE=1): a real `helm install`, a `kubectl auth can-i` table for both
//! service accounts, `helm uninstall` leaving only the CRDs, and a server-side dry run of
//! every rendered object.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use tortie_e2e::support::{TestCluster, skip};
use tortie_e2e::{cluster, wait_for};

/// The namespace every test installs into, as the documentation tells people to.
const NAMESPACE: &str = "tortie-system";

/// Environment variables the operator reads, all of which the chart sets with default
/// values (TORTIE_DEFAULT_POOL_CIDR only when ipPool.cidr is set, TORTIE_UPLINK_MTU only
/// when mtu is).
const OPERATOR_ENV: [&str; 12] = [
    "POD_NAME",
    "POD_NAMESPACE",
    "TORTIE_METRICS_ADDR",
    "TORTIE_LEASE_NAME",
    "TORTIE_DEFAULT_POOL_ENCAPSULATION",
    "TORTIE_DEFAULT_BLOCK_SIZE",
    "TORTIE_DEFAULT_POOL_NAT_OUTGOING",
    "TORTIE_DEFAULT_POOL_NODE_SELECTOR",
    "TORTIE_IPAM_GC_INTERVAL",
    "TORTIE_IPAM_GC_GRACE",
    "TORTIE_LOG_LEVEL",
    "TORTIE_LOG_FORMAT",
];

/// Environment variables the agent's main container reads.
const AGENT_ENV: [&str; 8] = [
    "NODE_NAME",
    "TORTIE_IPAM_SOCKET",
    "TORTIE_CNI_CONF_DIR",
    "TORTIE_CNI_BIN_DIR",
    "TORTIE_HEALTH_ADDR",
    "TORTIE_BGP_ENABLED",
    "TORTIE_LOG_LEVEL",
    "TORTIE_MTU",
];

/// The CRD manifests the chart must carry unchanged.
fn generated_crds_dir() -> PathBuf {
    repo_root().join("crds/manifests")
}

#[test]
fn chart_crds_are_copies_of_the_generated_manifests() {
    let generated = yaml_files(&generated_crds_dir());
    let chart = yaml_files(&repo_root().join("charts/tortie/crds"));
    assert_eq!(generated.len(), 15, "crds/manifests should hold 15 CRDs");

    let names = |files: &[PathBuf]| -> BTreeSet<String> {
        files
            .iter()
            .map(|path| file_name(path))
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(
        names(&chart),
        names(&generated),
        "charts/tortie/crds must hold exactly the files of crds/manifests; run `make chart-crds`"
    );

    for path in &generated {
        let copy = repo_root().join("charts/tortie/crds").join(file_name(path));
        let want = std::fs::read(path).expect("a generated manifest is readable");
        let got = std::fs::read(&copy).expect("the chart's copy is readable");
        assert!(
            got == want,
            "{} differs from {}; run `make chart-crds` (and `make manifest`)",
            copy.display(),
            path.display()
        );
    }
}

#[test]
fn chart_lints_renders_and_refuses_bad_values() {
    let Some(helm) = Helm::find("chart-render") else {
        return;
    };

    for values in [None, Some(non_default_values())] {
        let mut args = vec!["lint", "--strict", "charts/tortie"];
        if let Some(values) = &values {
            args.extend(["-f", values]);
        }
        let lint = helm.run(&args);
        assert!(
            lint.status.success(),
            "helm lint {values:?} failed:\n{}{}",
            text(&lint.stdout),
            text(&lint.stderr)
        );
    }

    // Default values: the binaries' contract.
    let objects = helm.template(&[]);
    check_contract(&objects);
    let operator = container(&objects, "Deployment", "tortie-operator", "operator");
    assert_eq!(
        env_value(&operator, "TORTIE_DEFAULT_POOL_CIDR"),
        None,
        "an empty ipPool.cidr leaves the range to the operator's detection"
    );
    assert_eq!(env_value(&operator, "KUBERNETES_SERVICE_HOST"), None);
    assert_eq!(
        env_value(&operator, "TORTIE_UPLINK_MTU"),
        None,
        "mtu 0 leaves the uplink MTU to the operator's default"
    );
    assert!(
        !objects
            .iter()
            .any(|object| kind(object) == "BGPConfiguration"),
        "with BGP off the chart leaves BGPConfiguration to the operator"
    );

    // Every value changed: still the contract, and the values arrive where they should.
    let values = non_default_values();
    let objects = helm.template(&["-f", &values]);
    check_contract(&objects);
    let operator = container(&objects, "Deployment", "tortie-operator", "operator");
    assert_eq!(
        operator["image"], "registry.example.test/net/mirror/operator:v9.9.9",
        "registry, repository and tag make the image name"
    );
    for (name, want) in [
        ("TORTIE_DEFAULT_POOL_CIDR", "10.244.0.0/16"),
        ("TORTIE_DEFAULT_POOL_ENCAPSULATION", "IPIP"),
        ("TORTIE_DEFAULT_BLOCK_SIZE", "24"),
        ("TORTIE_DEFAULT_POOL_NAT_OUTGOING", "false"),
        (
            "TORTIE_DEFAULT_POOL_NODE_SELECTOR",
            "kubernetes.io/os == \"linux\"",
        ),
        ("TORTIE_UPLINK_MTU", "9000"),
        ("TORTIE_METRICS_ADDR", "0.0.0.0:9191"),
        ("TORTIE_LEASE_NAME", "tortie-operator-b"),
        ("TORTIE_IPAM_GC_INTERVAL", "10"),
        ("TORTIE_IPAM_GC_GRACE", "120"),
        ("TORTIE_LOG_LEVEL", "debug"),
        ("TORTIE_LOG_FORMAT", "json"),
        ("KUBERNETES_SERVICE_HOST", "198.18.0.2"),
        ("KUBERNETES_SERVICE_PORT", "6443"),
        ("RUST_BACKTRACE", "1"),
    ] {
        assert_eq!(
            env_value(&operator, name).as_deref(),
            Some(want),
            "operator {name}"
        );
    }
    let agent = container(&objects, "DaemonSet", "tortie-agent", "agent");
    for (name, want) in [
        ("TORTIE_CNI_BIN_DIR", "/usr/libexec/cni"),
        ("TORTIE_CNI_CONF_DIR", "/etc/cni/tortie.d"),
        ("TORTIE_HEALTH_ADDR", "0.0.0.0:9199"),
        ("TORTIE_BGP_ENABLED", "true"),
        ("TORTIE_MTU", "9000"),
        ("KUBERNETES_SERVICE_HOST", "198.18.0.2"),
        ("KUBERNETES_SERVICE_PORT", "6443"),
    ] {
        assert_eq!(
            env_value(&agent, name).as_deref(),
            Some(want),
            "agent {name}"
        );
    }
    assert_eq!(agent["args"], serde_json::json!(["--example-flag"]));
    let bgp = object(&objects, "BGPConfiguration", "default");
    assert_eq!(bgp["spec"]["asNumber"], 4_200_000_001u64);
    assert_eq!(bgp["spec"]["nodeToNodeMeshEnabled"], false);
    let daemonset = object(&objects, "DaemonSet", "tortie-agent");
    assert_eq!(
        daemonset["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
        "20%"
    );
    // The BGP password hook: one Role per namespace naming exactly the listed Secrets.
    let password_roles: Vec<(String, Vec<String>)> = objects
        .iter()
        .filter(|object| kind(object) == "Role" && name(object) == "tortie-agent-bgp-passwords")
        .map(|role| {
            let rules = role["rules"].as_array().expect("a Role has rules");
            assert_eq!(rules.len(), 1, "one rule: get these Secrets");
            assert_eq!(rules[0]["verbs"], serde_json::json!(["get"]));
            let names = rules[0]["resourceNames"]
                .as_array()
                .expect("the rule names its Secrets")
                .iter()
                .map(|name| name.as_str().expect("a name").to_string())
                .collect();
            (namespace(role).to_string(), names)
        })
        .collect();
    assert_eq!(
        password_roles,
        vec![
            ("kube-system".to_string(), vec!["rack-1".to_string()]),
            (
                "tortie-system".to_string(),
                vec!["peer-a".to_string(), "peer-b".to_string()]
            ),
        ]
    );

    // Wrong values fail before anything is rendered, naming the value.
    for (set, must_name) in [
        (
            "ipPool.blockSize=40",
            vec!["/ipPool/blockSize", "got 40, want 32"],
        ),
        (
            "ipPool.encapsulation=GRE",
            vec!["/ipPool/encapsulation", "VXLANCrossSubnet"],
        ),
        (
            "encapsulation=GRE",
            vec!["additional properties 'encapsulation' not allowed"],
        ),
        ("ipPool.natOutgoing=maybe", vec!["/ipPool/natOutgoing"]),
        ("logLevel=verbose", vec!["/logLevel"]),
        ("agent.maxUnavailable=0", vec!["/agent/maxUnavailable"]),
        ("cni.binDir=opt/cni/bin", vec!["/cni/binDir"]),
        ("ipPool.cidr=10.244.0.0", vec!["/ipPool/cidr"]),
        (
            "ipPool.cidr=10.244.0.0/16,ipPool.blockSize=122",
            vec!["ipPool.blockSize 122 is an IPv6 block size", "use 20-32"],
        ),
        (
            "ipPool.cidr=10.244.0.0/24,ipPool.blockSize=20",
            vec!["ipPool.blockSize 20 is shorter than the prefix of ipPool.cidr"],
        ),
        (
            "apiServer.host=10.0.0.1",
            vec!["apiServer.host is set but apiServer.port is empty"],
        ),
    ] {
        let output = helm.run(&["template", "tortie", "charts/tortie", "--set", set]);
        let stderr = text(&output.stderr);
        assert!(
            !output.status.success(),
            "helm template --set {set} should fail"
        );
        for needle in must_name {
            assert!(
                stderr.contains(needle),
                "helm template --set {set}: the error should contain {needle:?}:\n{stderr}"
            );
        }
    }
}

#[test]
fn deploy_manifest_is_the_rendered_chart() {
    let Some(helm) = Helm::find("chart-deploy-manifest") else {
        return;
    };
    let output = Command::new("bash")
        .arg(repo_root().join("charts/render.sh"))
        .arg("--stdout")
        .env("HELM", &helm.binary)
        .envs(helm.env())
        .output()
        .expect("bash runs charts/render.sh");
    assert!(
        output.status.success(),
        "charts/render.sh failed: {}",
        text(&output.stderr)
    );
    let rendered = text(&output.stdout);
    let committed = std::fs::read_to_string(repo_root().join("deploy/tortie.yaml"))
        .expect("deploy/tortie.yaml is readable");
    assert!(
        rendered == committed,
        "deploy/tortie.yaml is not what the chart renders; run `make manifest`\n{}",
        first_difference(&committed, &rendered)
    );

    // It holds the namespace, every CRD and the chart's objects.
    let objects = parse_objects(&committed);
    assert_eq!(kind(&objects[0]), "Namespace");
    assert_eq!(name(&objects[0]), NAMESPACE);
    let crds = objects
        .iter()
        .filter(|object| kind(object) == "CustomResourceDefinition")
        .count();
    assert_eq!(crds, 15);
    check_contract(&objects);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_installs_with_narrow_rbac_and_uninstalls_cleanly() {
    // Always a fresh local cluster: on an external one (kind) Tortie is already installed
    // under these names, and this test installs and uninstalls its own release.
    let Some(cluster) = TestCluster::start_local("chart-install").await else {
        return;
    };
    let helm = Helm::find("chart-install").expect("the control-plane build includes helm");
    let kubeconfig = cluster
        .kubeconfig()
        .to_str()
        .expect("a UTF-8 path")
        .to_string();

    // The install the documentation gives, plus one BGP password Secret to check the hook.
    let install = helm.run(&[
        "install",
        "tortie",
        "charts/tortie",
        "--kubeconfig",
        &kubeconfig,
        "-n",
        NAMESPACE,
        "--create-namespace",
        "--set",
        "ipPool.cidr=10.244.0.0/16",
        "--set",
        "bgp.passwordSecrets[0].namespace=tortie-system",
        "--set",
        "bgp.passwordSecrets[0].name=bgp-peer-a",
    ]);
    assert!(
        install.status.success(),
        "helm install failed:\n{}{}",
        text(&install.stdout),
        text(&install.stderr)
    );
    let notes = text(&install.stdout);
    for next in [
        "kubectl get pods -n tortie-system",
        "kubectl get nodes",
        "kubectl get ippools",
        "kubectl get nodenetworkconfigs",
    ] {
        assert!(notes.contains(next), "NOTES should say `{next}`:\n{notes}");
    }

    // Helm installed the CRDs from the chart's crds/ directory.
    for path in yaml_files(&generated_crds_dir()) {
        let crd = file_name(&path).trim_end_matches(".yaml").to_string();
        cluster.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            &format!("crd/{crd}"),
        ]);
    }

    // The API server took the workloads, and the controller manager made their pods
    // (they stay Pending: this cluster has no node).
    let operator_env = cluster.kubectl(&[
        "get",
        "deployment",
        "-n",
        NAMESPACE,
        "tortie-operator",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].env[*].name}",
    ]);
    assert!(
        operator_env.contains("TORTIE_DEFAULT_POOL_CIDR"),
        "{operator_env}"
    );
    cluster.kubectl(&["get", "daemonset", "-n", NAMESPACE, "tortie-agent"]);
    wait_for(
        "the Deployment's two operator pods",
        Duration::from_secs(60),
        || {
            let output = cluster.kubectl_output(&[
                "get",
                "pods",
                "-n",
                NAMESPACE,
                "-l",
                "app.kubernetes.io/name=tortie-operator",
                "-o",
                "name",
            ]);
            text(&output.stdout).lines().count() == 2
        },
    );

    // Who may do what, as the API server's authorizer answers it.
    let table = can_i_table(&cluster);
    let mut report = String::from("\nkubectl auth can-i, as the chart's service accounts:\n");
    let mut wrong = Vec::new();
    for row in &table {
        report.push_str(&format!(
            "  {:<9} {:<6} {:<56} {:<24} {:<3} (want {})\n",
            row.account,
            row.verb,
            row.resource,
            row.scope,
            row.answer,
            if row.expect { "yes" } else { "no" }
        ));
        if (row.answer == "yes") != row.expect {
            wrong.push(format!(
                "{} {} {} {}",
                row.account, row.verb, row.resource, row.scope
            ));
        }
    }
    // Straight to stderr so the table shows even when the test passes.
    let _ = writeln!(std::io::stderr(), "{report}");
    assert!(wrong.is_empty(), "unexpected answers: {wrong:?}{report}");

    // Wrong values are refused by `helm install` too, before anything reaches the cluster.
    for (set, needle) in [
        ("ipPool.blockSize=40", "/ipPool/blockSize"),
        ("ipPool.encapsulation=GRE", "/ipPool/encapsulation"),
        ("encapsulation=GRE", "'encapsulation' not allowed"),
    ] {
        let output = helm.run(&[
            "install",
            "tortie-bad",
            "charts/tortie",
            "--kubeconfig",
            &kubeconfig,
            "-n",
            NAMESPACE,
            "--dry-run",
            "--set",
            set,
        ]);
        let stderr = text(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains(needle),
            "helm install --dry-run --set {set} should fail naming {needle:?}:\n{stderr}"
        );
    }

    // Uninstall removes every object of the release; the CRDs (and the objects people made
    // with them) stay, as Helm does for crds/.
    let uninstall = helm.run(&[
        "uninstall",
        "tortie",
        "--kubeconfig",
        &kubeconfig,
        "-n",
        NAMESPACE,
        "--wait",
        "--timeout",
        "60s",
    ]);
    assert!(
        uninstall.status.success(),
        "helm uninstall failed: {}",
        text(&uninstall.stderr)
    );
    wait_for(
        "helm uninstall to leave no Tortie object",
        Duration::from_secs(60),
        || leftovers(&cluster).is_empty(),
    );
    let crds = cluster.kubectl(&["get", "crd", "-o", "name"]);
    assert_eq!(
        crds.lines()
            .filter(|line| line.contains("projectcalico.org") || line.contains("tortie.dev"))
            .count(),
        15,
        "the CRDs stay after uninstall:\n{crds}"
    );

    // Every rendered object is accepted by the API server (dry run, nothing is stored):
    // default values, every value changed, and the kubectl manifest. kube-system and the
    // install namespace exist; the non-default values also name them for BGP Secrets.
    let values = non_default_values();
    let renders = [
        ("default values", helm.template_text(&[])),
        ("non-default values", helm.template_text(&["-f", &values])),
        (
            "deploy/tortie.yaml",
            std::fs::read_to_string(repo_root().join("deploy/tortie.yaml"))
                .expect("deploy/tortie.yaml is readable"),
        ),
    ];
    for (what, yaml) in renders {
        let objects = parse_objects(&yaml);
        let output = cluster.kubectl_with_input(
            &["apply", "--server-side", "--dry-run=server", "-f", "-"],
            &yaml,
        );
        let stdout = text(&output.stdout);
        assert!(
            output.status.success(),
            "the API server refused part of the {what} render:\n{}\n{stdout}",
            text(&output.stderr)
        );
        let accepted = stdout
            .lines()
            .filter(|line| line.ends_with("(server dry run)"))
            .count();
        assert_eq!(
            accepted,
            objects.len(),
            "{what}: every object should be accepted:\n{stdout}"
        );
    }
}

/// The `helm` binary of the control-plane build, run with its own config, cache and data
/// directories so tests never touch a person's Helm setup.
struct Helm {
    binary: PathBuf,
    home: PathBuf,
}

impl Helm {
    /// The helm binary, or `None` (the test is skipped) when it has not been built.
    fn find(test: &str) -> Option<Helm> {
        let binary = match cluster::bin_dir() {
            Ok(dir) => dir.join("helm"),
            Err(error) => {
                skip(test, &error.to_string());
                return None;
            }
        };
        if !binary.is_file() {
            skip(
                test,
                &format!(
                    "{} is missing; run tests/e2e/scripts/build-control-plane.sh",
                    binary.display()
                ),
            );
            return None;
        }
        let home = std::env::temp_dir().join(format!("tortie-helm-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&home).expect("the temporary directory is writable");
        Some(Helm { binary, home })
    }

    /// Helm's per-user directories, inside this run's own temporary directory.
    fn env(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            ("HELM_CONFIG_HOME", self.home.join("config")),
            ("HELM_CACHE_HOME", self.home.join("cache")),
            ("HELM_DATA_HOME", self.home.join("data")),
        ]
    }

    /// Runs helm in the repository root; returns what it printed, whatever the outcome.
    fn run(&self, args: &[&str]) -> Output {
        Command::new(&self.binary)
            .args(args)
            .current_dir(repo_root())
            .envs(self.env())
            .output()
            .unwrap_or_else(|error| panic!("could not run {}: {error}", self.binary.display()))
    }

    /// `helm template tortie charts/tortie -n tortie-system <args>`; panics when it fails.
    fn template_text(&self, args: &[&str]) -> String {
        let mut all = vec!["template", "tortie", "charts/tortie", "-n", NAMESPACE];
        all.extend(args);
        let output = self.run(&all);
        assert!(
            output.status.success(),
            "helm {} failed: {}",
            all.join(" "),
            text(&output.stderr)
        );
        text(&output.stdout)
    }

    /// [`Helm::template_text`], parsed into objects.
    fn template(&self, args: &[&str]) -> Vec<Value> {
        parse_objects(&self.template_text(args))
    }
}

impl Drop for Helm {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// One line of the `kubectl auth can-i` table.
struct CanI {
    account: &'static str,
    verb: &'static str,
    resource: &'static str,
    /// `-n <namespace>` or `--all-namespaces`.
    scope: &'static str,
    expect: bool,
    answer: String,
}

/// Asks the API server what each service account may do.
fn can_i_table(cluster: &TestCluster) -> Vec<CanI> {
    const ALL: &str = "--all-namespaces";
    const OWN: &str = "-n tortie-system";
    const KUBE_SYSTEM: &str = "-n kube-system";
    // (account, verb, resource, scope, expected). `kind/name` asks about one object;
    // a subresource needs the flag (`kind/status` would ask about an object named status).
    #[rustfmt::skip]
    let questions = [
        ("agent", "get", "nodenetworkconfigs.tortie.dev --subresource=status", ALL, true),
        ("agent", "patch", "nodenetworkconfigs.tortie.dev --subresource=status", ALL, true),
        ("agent", "watch", "nodenetworkconfigs.tortie.dev", ALL, true),
        ("agent", "update", "nodenetworkconfigs.tortie.dev", ALL, false),
        ("agent", "patch", "nodenetworkconfigs.tortie.dev", ALL, false),
        ("agent", "update", "ipamblocks.crd.projectcalico.org", ALL, true),
        ("agent", "create", "blockaffinities.crd.projectcalico.org", ALL, true),
        ("agent", "delete", "ipamhandles.crd.projectcalico.org", ALL, true),
        ("agent", "patch", "nodes --subresource=status", ALL, true),
        ("agent", "get", "pods", ALL, true),
        ("agent", "list", "pods", ALL, false),
        ("agent", "get", "secrets/bgp-peer-a", OWN, true),
        ("agent", "get", "secrets/other", OWN, false),
        ("agent", "list", "secrets", ALL, false),
        ("agent", "list", "secrets", OWN, false),
        ("agent", "create", "ippools.crd.projectcalico.org", ALL, false),
        ("agent", "update", "ippools.crd.projectcalico.org", ALL, false),
        ("agent", "patch", "ippools.crd.projectcalico.org --subresource=status", ALL, false),
        ("agent", "delete", "nodes", ALL, false),
        ("agent", "update", "nodes", ALL, false),
        ("agent", "patch", "nodes", ALL, true),
        ("operator", "patch", "ippools.crd.projectcalico.org --subresource=status", ALL, true),
        ("operator", "create", "nodenetworkconfigs.tortie.dev", ALL, true),
        ("operator", "list", "pods", ALL, true),
        ("operator", "get", "pods", ALL, true),
        ("operator", "list", "networkpolicies.networking.k8s.io", ALL, true),
        ("operator", "delete", "ipamblocks.crd.projectcalico.org", ALL, true),
        ("operator", "create", "events.events.k8s.io", OWN, true),
        ("operator", "update", "leases.coordination.k8s.io/tortie-operator", OWN, true),
        ("operator", "update", "leases.coordination.k8s.io/other", OWN, false),
        ("operator", "get", "configmaps/kubeadm-config", KUBE_SYSTEM, true),
        ("operator", "get", "configmaps/kube-proxy", KUBE_SYSTEM, false),
        ("operator", "get", "secrets", ALL, false),
        ("operator", "get", "secrets", OWN, false),
        ("operator", "get", "secrets", KUBE_SYSTEM, false),
        ("operator", "list", "secrets", ALL, false),
        ("operator", "delete", "ippools.crd.projectcalico.org", ALL, false),
        ("operator", "delete", "nodes", ALL, false),
        ("operator", "create", "pods", ALL, false),
        ("operator", "patch", "nodes --subresource=status", ALL, false),
    ];
    questions
        .into_iter()
        .map(|(account, verb, resource, scope, expect)| {
            let user = format!("--as=system:serviceaccount:{NAMESPACE}:tortie-{account}");
            let namespace_group = format!("--as-group=system:serviceaccounts:{NAMESPACE}");
            // The groups a real service-account token carries, so grants to them count.
            let mut args = vec!["auth", "can-i", verb];
            args.extend(resource.split(' '));
            args.extend([
                &user,
                "--as-group=system:serviceaccounts",
                &namespace_group,
                "--as-group=system:authenticated",
            ]);
            args.extend(scope.split(' '));
            let output = cluster.kubectl_output(&args);
            let answer = text(&output.stdout).trim().to_string();
            assert!(
                answer == "yes" || answer == "no",
                "kubectl {}: {answer} {}",
                args.join(" "),
                text(&output.stderr)
            );
            CanI {
                account,
                verb,
                resource,
                scope,
                expect,
                answer,
            }
        })
        .collect()
}

/// Tortie objects still in the cluster (CRDs aside), as `kind/name` lines.
fn leftovers(cluster: &TestCluster) -> Vec<String> {
    let mut found = Vec::new();
    for (kinds, scope) in [
        (
            "deployments,daemonsets,serviceaccounts,services,roles,rolebindings,poddisruptionbudgets",
            NAMESPACE,
        ),
        ("roles,rolebindings", "kube-system"),
    ] {
        let output = cluster.kubectl(&["get", kinds, "-n", scope, "-o", "name"]);
        found.extend(
            output
                .lines()
                .filter(|line| line.contains("tortie"))
                .map(|line| format!("{scope}: {line}")),
        );
    }
    let cluster_wide = cluster.kubectl(&["get", "clusterroles,clusterrolebindings", "-o", "name"]);
    found.extend(
        cluster_wide
            .lines()
            .filter(|line| line.contains("tortie"))
            .map(str::to_string),
    );
    found
}

/// What every render must hold, whatever the values: the binaries' contract and the
/// security rules.
fn check_contract(objects: &[Value]) {
    let operator = container(objects, "Deployment", "tortie-operator", "operator");
    assert_eq!(operator["command"], serde_json::json!(["tortie-operator"]));
    for name in OPERATOR_ENV {
        assert!(
            env_value(&operator, name).is_some(),
            "the operator container needs {name}"
        );
    }
    let deployment = object(objects, "Deployment", "tortie-operator");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(
        pod["hostNetwork"], true,
        "the operator runs before pod networking"
    );
    assert_eq!(pod["serviceAccountName"], "tortie-operator");
    let tolerated: Vec<&str> = pod["tolerations"]
        .as_array()
        .expect("the operator has tolerations")
        .iter()
        .map(|toleration| toleration["key"].as_str().unwrap_or("*"))
        .collect();
    assert!(
        tolerated.contains(&"*")
            || (tolerated.contains(&"node.kubernetes.io/not-ready")
                && tolerated.contains(&"node-role.kubernetes.io/control-plane")),
        "the operator must run on NotReady and control-plane nodes: {tolerated:?}"
    );
    assert!(operator["securityContext"]["privileged"].is_null());

    let daemonset = object(objects, "DaemonSet", "tortie-agent");
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["serviceAccountName"], "tortie-agent");
    assert_eq!(daemonset["spec"]["updateStrategy"]["type"], "RollingUpdate");
    let agent = container(objects, "DaemonSet", "tortie-agent", "agent");
    assert_eq!(agent["command"], serde_json::json!(["tortie-agent", "run"]));
    for name in AGENT_ENV {
        assert!(env_value(&agent, name).is_some(), "the agent needs {name}");
    }
    assert_eq!(
        env_value(&agent, "TORTIE_IPAM_SOCKET").as_deref(),
        Some("/var/run/tortie/ipam.sock")
    );
    assert_eq!(
        agent["lifecycle"]["preStop"]["exec"]["command"],
        serde_json::json!(["tortie-agent", "remove-cni-config"])
    );
    let security = &agent["securityContext"];
    assert!(
        security["privileged"].is_null() || security["privileged"] == false,
        "only install-cni may be privileged"
    );
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["runAsUser"], 0);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(
        security["capabilities"]["add"],
        serde_json::json!(["NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE"])
    );
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(agent[probe]["httpGet"]["port"], "health", "agent {probe}");
    }
    let init = pod["initContainers"]
        .as_array()
        .expect("the agent has an init container");
    assert_eq!(init.len(), 1);
    assert_eq!(init[0]["name"], "install-cni");
    assert_eq!(
        init[0]["command"],
        serde_json::json!(["tortie-agent", "install-cni"])
    );
    assert_eq!(init[0]["securityContext"]["privileged"], true);

    // Host directories appear at their own path in every container, and the CNI binary
    // directory is writable only by the init step.
    let bin_dir = env_value(&agent, "TORTIE_CNI_BIN_DIR").expect("checked above");
    let conf_dir = env_value(&agent, "TORTIE_CNI_CONF_DIR").expect("checked above");
    let host_paths: Vec<(String, String)> = pod["volumes"]
        .as_array()
        .expect("the agent has volumes")
        .iter()
        .filter(|volume| volume["hostPath"].is_object())
        .map(|volume| {
            (
                volume["name"].as_str().expect("a volume name").to_string(),
                volume["hostPath"]["path"]
                    .as_str()
                    .expect("a hostPath path")
                    .to_string(),
            )
        })
        .collect();
    let host_dirs: BTreeSet<&str> = host_paths.iter().map(|(_, path)| path.as_str()).collect();
    assert_eq!(
        host_dirs,
        BTreeSet::from([bin_dir.as_str(), conf_dir.as_str(), "/var/run/tortie"])
    );
    for container in init.iter().chain([&agent]) {
        let mounts = container["volumeMounts"].as_array().expect("mounts");
        for (volume, path) in &host_paths {
            let Some(mount) = mounts.iter().find(|mount| mount["name"] == **volume) else {
                continue;
            };
            assert_eq!(
                mount["mountPath"], **path,
                "{}: host path {path} must be mounted at the same path",
                container["name"]
            );
            let read_only = mount["readOnly"] == true;
            if *path == bin_dir {
                assert_eq!(
                    read_only,
                    container["name"] == "agent",
                    "{}: the CNI binary directory is writable only in install-cni",
                    container["name"]
                );
            }
        }
    }
    let main_mounts: BTreeSet<&str> = agent["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .filter_map(|mount| mount["mountPath"].as_str())
        .collect();
    for path in [bin_dir.as_str(), conf_dir.as_str(), "/var/run/tortie"] {
        assert!(main_mounts.contains(path), "the agent needs {path} mounted");
    }

    // Every Tortie image is run by an explicit command (the local node runtime and the
    // images rely on it), and the image names end in operator or agent.
    for workload in objects
        .iter()
        .filter(|object| matches!(kind(object), "Deployment" | "DaemonSet"))
    {
        let pod = &workload["spec"]["template"]["spec"];
        for container in pod["containers"]
            .as_array()
            .into_iter()
            .chain(pod["initContainers"].as_array())
            .flatten()
        {
            assert!(
                container["command"].is_array(),
                "{}/{}: no explicit command",
                name(workload),
                container["name"]
            );
            let image = container["image"].as_str().expect("an image");
            let repository = image.rsplit_once(':').map_or(image, |(left, _)| left);
            let last = repository.rsplit('/').next().unwrap_or(repository);
            assert!(
                last == "operator" || last == "agent",
                "{image}: the image's last path segment names the component"
            );
        }
    }

    // Secrets: never for the operator, and for the agent only by name.
    for role in objects
        .iter()
        .filter(|object| matches!(kind(object), "ClusterRole" | "Role"))
    {
        for rule in role["rules"].as_array().expect("a role has rules") {
            let strings = |field: &str| -> Vec<String> {
                rule[field]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|value| value.as_str().expect("a string").to_string())
                    .collect()
            };
            let resources = strings("resources");
            let verbs = strings("verbs");
            assert!(
                !resources.iter().any(|r| r == "*") && !verbs.iter().any(|v| v == "*"),
                "{} {}: no wildcards",
                kind(role),
                name(role)
            );
            if resources.iter().any(|r| r == "secrets") {
                assert_eq!(kind(role), "Role", "secrets only through a namespaced Role");
                assert_eq!(name(role), "tortie-agent-bgp-passwords");
                assert_eq!(verbs, vec!["get".to_string()]);
                assert!(!strings("resourceNames").is_empty(), "secrets only by name");
            }
        }
    }
    for binding in objects
        .iter()
        .filter(|object| matches!(kind(object), "ClusterRoleBinding" | "RoleBinding"))
    {
        for subject in binding["subjects"].as_array().expect("subjects") {
            assert_eq!(subject["kind"], "ServiceAccount");
            assert_eq!(subject["namespace"], NAMESPACE);
        }
    }

    let service = object(objects, "Service", "tortie-operator-metrics");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "metrics");
}

/// The object of `kind` named `name`; panics when the render has none.
fn object<'a>(objects: &'a [Value], kind_: &str, name_: &str) -> &'a Value {
    objects
        .iter()
        .find(|object| kind(object) == kind_ && name(object) == name_)
        .unwrap_or_else(|| panic!("the render has no {kind_} {name_}"))
}

/// A container of a workload, by name.
fn container(objects: &[Value], kind_: &str, workload: &str, name_: &str) -> Value {
    object(objects, kind_, workload)["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("a pod template has containers")
        .iter()
        .find(|container| container["name"] == name_)
        .unwrap_or_else(|| panic!("{kind_} {workload} has no container {name_}"))
        .clone()
}

/// The literal value of a container's environment variable, or `""` for one taken from
/// a field reference; `None` when the variable is not set.
fn env_value(container: &Value, variable: &str) -> Option<String> {
    container["env"]
        .as_array()?
        .iter()
        .find(|entry| entry["name"] == variable)
        .map(|entry| entry["value"].as_str().unwrap_or_default().to_string())
}

fn kind(object: &Value) -> &str {
    object["kind"].as_str().unwrap_or_default()
}

fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

fn namespace(object: &Value) -> &str {
    object["metadata"]["namespace"].as_str().unwrap_or_default()
}

/// The objects of a multi-document YAML stream (empty documents dropped). Duplicate keys
/// are an error here as they are for kubectl.
fn parse_objects(yaml: &str) -> Vec<Value> {
    let documents: Vec<Value> = serde_saphyr::from_multiple(yaml)
        .unwrap_or_else(|error| panic!("render is not YAML: {error}"));
    documents
        .into_iter()
        .filter(|document| !document.is_null())
        .collect()
}

/// The repository root.
fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root exists")
}

/// The non-default values file the chart's tests render with.
fn non_default_values() -> String {
    repo_root()
        .join("charts/tortie/ci/non-default-values.yaml")
        .to_str()
        .expect("a UTF-8 path")
        .to_string()
}

/// The `.yaml` files of a directory, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    files
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .expect("a file has a name")
        .to_string_lossy()
        .into_owned()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The first line where two texts differ, for drift messages.
fn first_difference(committed: &str, rendered: &str) -> String {
    let mut committed_lines = committed.lines();
    let mut rendered_lines = rendered.lines();
    for number in 1.. {
        match (committed_lines.next(), rendered_lines.next()) {
            (None, None) => break,
            (left, right) if left == right => continue,
            (left, right) => {
                return format!(
                    "first difference at line {number}:\n  committed: {}\n  rendered:  {}",
                    left.unwrap_or("<end>"),
                    right.unwrap_or("<end>")
                );
            }
        }
    }
    "the texts differ only in line endings".to_string()
}
