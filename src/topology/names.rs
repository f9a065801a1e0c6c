//! Stream, subject and durable names, exactly as the README documents them.

use crate::topology::subjects::validate_token;

/// Every name the bridge derives from (env, app_name, destination_app).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub stream: String,
    pub publish_subject: String,
    pub subscribe_subject: String,
    pub dlq_subject: String,
    pub durable: String,
}

impl Names {
    pub fn new(env: &str, app: &str, dest: &str) -> Result<Names, String> {
        validate_token("env", env)?;
        // env begins every subject: "$SYS" or "_INBOX" would make them system subjects.
        if crate::topology::subjects::is_system_subject(&format!("{env}.")) {
            return Err(format!("env {env:?} would begin every subject with a NATS system prefix ($ or _INBOX)"));
        }
        validate_token("app_name", app)?;
        validate_token("destination_app", dest)?;
        Ok(Names {
            stream: format!("{env}-jetstream-bridge-stream"),
            publish_subject: format!("{env}.{app}.sync.{dest}"),
            subscribe_subject: format!("{env}.{dest}.sync.{app}"),
            dlq_subject: format!("{env}.sync.dlq"),
            durable: format!("{env}-{app}-workers"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_names() {
        let n = Names::new("production", "api_service", "notification_service").unwrap();
        assert_eq!(n.stream, "production-jetstream-bridge-stream");
        assert_eq!(n.publish_subject, "production.api_service.sync.notification_service");
        assert_eq!(n.subscribe_subject, "production.notification_service.sync.api_service");
        assert_eq!(n.dlq_subject, "production.sync.dlq");
        assert_eq!(n.durable, "production-api_service-workers");
    }

    #[test]
    fn rejects_wildcards_in_tokens() {
        assert!(Names::new("dev", "a.b", "c").unwrap_err().contains("app_name"));
        assert!(Names::new("dev", "a", ">").unwrap_err().contains("destination_app"));
        assert!(Names::new("d v", "a", "b").unwrap_err().contains("env"));
    }
}
