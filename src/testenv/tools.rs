//! Where the real binaries are: the ones `hack/install-tools.sh` built and cached.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Paths of the pinned external tools.
#[derive(Clone, Debug)]
pub struct Tools {
    pub kube_apiserver: PathBuf,
    pub kubectl: PathBuf,
    pub etcd: PathBuf,
    pub helm: PathBuf,
    pub moto_server: PathBuf,
    /// The Kubernetes version pinned in hack/versions.env, e.g. `v1.36.3`.
    pub kubernetes_version: String,
}

/// The repository root (where Cargo.toml lives).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Locates the tools, running `hack/install-tools.sh` once per process if they are missing
/// (a cold run builds the Kubernetes binaries: 10-20 minutes).
pub fn tools() -> anyhow::Result<&'static Tools> {
    static TOOLS: OnceLock<Result<Tools, String>> = OnceLock::new();
    TOOLS
        .get_or_init(|| locate().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

fn locate() -> anyhow::Result<Tools> {
    let script = repo_root().join("hack/install-tools.sh");
    let out = std::process::Command::new(&script)
        .arg("--env")
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| anyhow::anyhow!("running {}: {e}", script.display()))?;
    if !out.status.success() {
        anyhow::bail!("{} failed with {}", script.display(), out.status);
    }
    let text = String::from_utf8(out.stdout)?;
    let var = |name: &str| -> anyhow::Result<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}=")))
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("install-tools.sh did not print {name}"))
    };
    let bin = PathBuf::from(var("FEIP_BIN_DIR")?);
    let tools = Tools {
        kube_apiserver: bin.join("kube-apiserver"),
        kubectl: bin.join("kubectl"),
        etcd: bin.join("etcd"),
        helm: bin.join("helm"),
        moto_server: PathBuf::from(var("FEIP_MOTO_SERVER")?),
        kubernetes_version: var("FEIP_KUBERNETES_VERSION")?,
    };
    for p in [
        &tools.kube_apiserver,
        &tools.kubectl,
        &tools.etcd,
        &tools.helm,
        &tools.moto_server,
    ] {
        ensure_exists(p)?;
    }
    Ok(tools)
}

fn ensure_exists(p: &Path) -> anyhow::Result<()> {
    if !p.exists() {
        anyhow::bail!("{} is missing after hack/install-tools.sh", p.display());
    }
    Ok(())
}
