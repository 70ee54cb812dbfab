//! The Kafka sink's side of the contract's [`SinkConfig`]: how the pipeline resolves, checks and
//! builds it. It keeps no archive to read back.

use std::path::Path;

use auditship_sink::{Field, Interpolate, Sink, SinkConfig, SinkContext, SinkError};

use crate::{is_secret_option, KafkaSink, KafkaSinkConfig, OptionValue};

impl SinkConfig for KafkaSinkConfig {
    fn resolve(&mut self, vars: &mut dyn Interpolate) -> Result<(), String> {
        let brokers_ok = vars.text("brokers", &mut self.brokers, Field::Setting);
        let topic_ok = vars.text("topic", &mut self.topic, Field::Setting);
        let mut unresolved = Vec::new();
        for (name, value) in self.options.iter_mut() {
            let OptionValue::Text(v) = value else { continue };
            let secret = is_secret_option(name);
            let field = format!("options.\"{name}\"");
            if secret && !v.contains("${") && vars.offline() {
                vars.warn(
                    &field,
                    "is written literally in the pipeline file; use \"${VAR}\"",
                );
            }
            let kind = if secret { Field::Secret } else { Field::Setting };
            if !vars.text(&field, v, kind) {
                unresolved.push(name.clone());
            }
        }
        if !(brokers_ok && topic_ok) {
            return Ok(());
        }
        // Check what can be checked: options whose variables are unset are left out (their
        // names are still checked when the pipeline runs).
        let mut checked = self.clone();
        for name in &unresolved {
            checked.options.remove(name);
        }
        for warning in checked.validate()? {
            vars.warn("", &warning);
        }
        Ok(())
    }

    fn build(&self, ctx: SinkContext, _state_dir: &Path) -> Result<Box<dyn Sink>, SinkError> {
        Ok(Box::new(KafkaSink::open(self.clone(), ctx)?))
    }
}
