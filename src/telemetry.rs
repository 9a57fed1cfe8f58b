//! Logging: text or JSON lines through `tracing`, with the AWS SDK's identity-printing target
//! held at info.

use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Installs the global tracing subscriber. The filter comes from `RUST_LOG` (default `info`).
/// A second call keeps the first subscriber.
pub fn init_logging(format: LogFormat) {
    let directives = log_directives(std::env::var("RUST_LOG").ok().as_deref());
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|e| {
        eprintln!("ignoring invalid RUST_LOG {directives:?}: {e}; logging at info");
        EnvFilter::new(log_directives(None))
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    // Err only means a subscriber is already installed (e.g. by a test); keep that one.
    drop(result);
}

/// The AWS SDK target that, at debug level, prints the resolved credentials identity
/// (including the access key id) while resolving the endpoint.
const SDK_IDENTITY_TARGET: &str = "aws_smithy_runtime::client::orchestrator::endpoints";

/// The filter directives: `RUST_LOG` (or `info`), with the SDK's identity-printing target held
/// at info unless the user names that target explicitly. `RUST_LOG=debug` is a common first
/// step when debugging, and it must not put an access key id into shipped logs.
fn log_directives(rust_log: Option<&str>) -> String {
    let base = rust_log
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("info");
    if base.contains(SDK_IDENTITY_TARGET) {
        base.to_owned()
    } else {
        format!("{base},{SDK_IDENTITY_TARGET}=info")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_directives_keep_the_sdk_identity_target_at_info() {
        let sdk = "aws_smithy_runtime::client::orchestrator::endpoints=info";
        assert_eq!(log_directives(None), format!("info,{sdk}"));
        assert_eq!(log_directives(Some("  ")), format!("info,{sdk}"));
        assert_eq!(log_directives(Some("debug")), format!("debug,{sdk}"));
        assert_eq!(
            log_directives(Some("feip=trace,aws_smithy_runtime=debug")),
            format!("feip=trace,aws_smithy_runtime=debug,{sdk}")
        );
        // Naming the target explicitly is an informed choice and is respected.
        let explicit = "debug,aws_smithy_runtime::client::orchestrator::endpoints=debug";
        assert_eq!(log_directives(Some(explicit)), explicit);
        for d in [None, Some("debug"), Some("warn,kube=debug")] {
            assert!(EnvFilter::try_new(log_directives(d)).is_ok());
        }
    }
}
