//! Stream, subject and durable names, exactly as the README documents them, for each
//! subject layout.

use crate::topology::subjects::{is_system_subject, validate_token};

/// Which names the bridge derives (the `subject_layout` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// The v3 layout (the default): env begins every subject and the stream and durable
    /// names; one DLQ per env.
    Env,
    /// The pure-Ruby gem's layout since 4.5 (its 7.x releases): no env in any name, one
    /// DLQ per app, one stream for every app.
    App,
}

impl Layout {
    /// The setting's values, as Ruby gives them.
    pub fn parse(value: &str) -> Result<Layout, String> {
        match value {
            "env" => Ok(Layout::Env),
            "app" => Ok(Layout::App),
            other => Err(format!("subject_layout must be :env or :app, got {other:?}")),
        }
    }

    /// The retention a stream the bridge creates gets: under `App` workqueue, as the
    /// pure-Ruby gem 7.x creates it (it adds no subject to a stream with any other
    /// retention, so the stream stays shareable whichever app creates it first).
    pub fn retention(self) -> &'static str {
        match self {
            Layout::Env => "limits",
            Layout::App => "workqueue",
        }
    }
}

/// Every name the bridge derives from (layout, env, app_name, destination_app).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub stream: String,
    pub publish_subject: String,
    pub subscribe_subject: String,
    pub dlq_subject: String,
    pub durable: String,
    /// The retention of a stream the bridge creates (Layout::retention).
    pub retention: &'static str,
}

impl Names {
    /// Under `App`, `env` is not read (not even checked).
    pub fn new(layout: Layout, env: &str, app: &str, dest: &str) -> Result<Names, String> {
        validate_token("app_name", app)?;
        validate_token("destination_app", dest)?;
        match layout {
            Layout::Env => {
                validate_token("env", env)?;
                leading("env", env, "every subject")?;
                Ok(Names {
                    stream: format!("{env}-jetstream-bridge-stream"),
                    publish_subject: format!("{env}.{app}.sync.{dest}"),
                    subscribe_subject: format!("{env}.{dest}.sync.{app}"),
                    dlq_subject: format!("{env}.sync.dlq"),
                    durable: format!("{env}-{app}-workers"),
                    retention: layout.retention(),
                })
            }
            Layout::App => {
                leading("app_name", app, "the publish and DLQ subjects")?;
                leading("destination_app", dest, "the subscribe subject")?;
                Ok(Names {
                    stream: "jetstream-bridge-stream".to_string(),
                    publish_subject: format!("{app}.sync.{dest}"),
                    subscribe_subject: format!("{dest}.sync.{app}"),
                    dlq_subject: format!("{app}.sync.dlq"),
                    durable: format!("{app}-workers"),
                    retention: layout.retention(),
                })
            }
        }
    }
}

/// A token that begins subjects: "$SYS" or "_INBOX" would make them system subjects.
fn leading(option: &str, token: &str, what: &str) -> Result<(), String> {
    if is_system_subject(&format!("{token}.")) {
        return Err(format!("{option} {token:?} would begin {what} with a NATS system prefix ($ or _INBOX)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_names() {
        let n = Names::new(Layout::Env, "production", "api_service", "notification_service").unwrap();
        assert_eq!(n.stream, "production-jetstream-bridge-stream");
        assert_eq!(n.publish_subject, "production.api_service.sync.notification_service");
        assert_eq!(n.subscribe_subject, "production.notification_service.sync.api_service");
        assert_eq!(n.dlq_subject, "production.sync.dlq");
        assert_eq!(n.durable, "production-api_service-workers");
    }

    #[test]
    fn app_layout_names_have_no_env() {
        for env in ["production", "", "$SYS", "a.b"] {
            let n = Names::new(Layout::App, env, "api", "billing").unwrap();
            assert_eq!(n.stream, "jetstream-bridge-stream");
            assert_eq!(n.publish_subject, "api.sync.billing");
            assert_eq!(n.subscribe_subject, "billing.sync.api");
            assert_eq!(n.dlq_subject, "api.sync.dlq");
            assert_eq!(n.durable, "api-workers");
        }
    }

    #[test]
    fn rejects_wildcards_in_tokens() {
        assert!(Names::new(Layout::Env, "dev", "a.b", "c").unwrap_err().contains("app_name"));
        assert!(Names::new(Layout::Env, "dev", "a", ">").unwrap_err().contains("destination_app"));
        assert!(Names::new(Layout::Env, "d v", "a", "b").unwrap_err().contains("env"));
        assert!(Names::new(Layout::App, "dev", "a b", "c").unwrap_err().contains("app_name"));
    }

    #[test]
    fn rejects_a_leading_system_token() {
        assert!(Names::new(Layout::Env, "$SYS", "a", "b").unwrap_err().contains("env"));
        assert!(Names::new(Layout::App, "dev", "$JS", "b").unwrap_err().contains("app_name"));
        assert!(Names::new(Layout::App, "dev", "a", "_INBOX").unwrap_err().contains("destination_app"));
        assert!(Names::new(Layout::Env, "dev", "$JS", "b").is_ok()); // env leads: "dev.$JS.sync.b"
    }

    #[test]
    fn layouts_parse_and_say_their_retention() {
        assert_eq!(Layout::parse("env").map(Layout::retention), Ok("limits"));
        assert_eq!(Layout::parse("app").map(Layout::retention), Ok("workqueue"));
        assert!(Layout::parse("v4").unwrap_err().contains("subject_layout must be :env or :app"));
    }
}
