//! What a `modelId` (or a profile's `copyFrom`) names: a foundation model, a system-defined
//! (cross-region) inference profile, or an application inference profile, by id or by ARN.

/// Geography prefixes of system-defined inference profile ids (`us.anthropic...`).
pub(crate) const GEO_PREFIXES: [&str; 8] =
    ["us", "us-gov", "eu", "apac", "jp", "au", "ca", "global"];

/// A model identifier, classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ModelRef<'a> {
    /// A foundation model, by id or by `arn:aws:bedrock:{region}::foundation-model/{id}`.
    Foundation {
        model_id: &'a str,
        /// The ARN's region; `None` for a bare id.
        region: Option<&'a str>,
    },
    /// A system-defined profile, by id (`us.{model}`) or by
    /// `arn:aws:bedrock:{region}:{account}:inference-profile/us.{model}`.
    SystemProfile {
        /// The foundation model the profile routes to.
        model_id: &'a str,
        /// The ARN's region and account; `None` for a bare id.
        region_account: Option<(&'a str, &'a str)>,
    },
    /// `arn:aws:bedrock:{region}:{account}:application-inference-profile/{id}`.
    ApplicationProfile { arn: &'a str },
    /// An `arn:` that is none of the above.
    OtherArn,
}

impl<'a> ModelRef<'a> {
    pub(crate) fn parse(identifier: &'a str) -> Self {
        let Some(arn) = Arn::parse(identifier) else {
            return if identifier.starts_with("arn:") {
                ModelRef::OtherArn
            } else {
                match strip_geo_prefix(identifier) {
                    Some(model_id) => ModelRef::SystemProfile {
                        model_id,
                        region_account: None,
                    },
                    None => ModelRef::Foundation {
                        model_id: identifier,
                        region: None,
                    },
                }
            };
        };
        let Some((kind, id)) = arn.resource.split_once('/') else {
            return ModelRef::OtherArn;
        };
        match kind {
            "foundation-model" if arn.account.is_empty() && !id.is_empty() => {
                ModelRef::Foundation {
                    model_id: id,
                    region: Some(arn.region),
                }
            }
            "inference-profile" => match strip_geo_prefix(id) {
                Some(model_id) => ModelRef::SystemProfile {
                    model_id,
                    region_account: Some((arn.region, arn.account)),
                },
                None => ModelRef::OtherArn,
            },
            "application-inference-profile" if !id.is_empty() => {
                ModelRef::ApplicationProfile { arn: identifier }
            }
            _ => ModelRef::OtherArn,
        }
    }
}

/// `us.anthropic.x` -> `anthropic.x`; `None` without a known geography prefix.
fn strip_geo_prefix(id: &str) -> Option<&str> {
    let (geo, model_id) = id.split_once('.')?;
    (GEO_PREFIXES.contains(&geo) && !model_id.is_empty()).then_some(model_id)
}

/// The parts of a Bedrock ARN (`arn:aws:bedrock:{region}:{account}:{resource}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Arn<'a> {
    pub(crate) region: &'a str,
    pub(crate) account: &'a str,
    pub(crate) resource: &'a str,
}

impl<'a> Arn<'a> {
    pub(crate) fn parse(text: &'a str) -> Option<Self> {
        // Six parts at most: a model id in the resource may hold more colons (`...-v1:0`).
        let mut parts = text.splitn(6, ':');
        let (Some("arn"), Some(partition), Some("bedrock"), Some(region), Some(account)) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        if !partition.starts_with("aws") {
            return None;
        }
        let resource = parts.next()?;
        Some(Self {
            region,
            account,
            resource,
        })
    }
}

pub(crate) fn foundation_model_arn(region: &str, model_id: &str) -> String {
    format!("arn:aws:bedrock:{region}::foundation-model/{model_id}")
}

pub(crate) fn application_profile_arn(region: &str, account: &str, id: &str) -> String {
    format!("arn:aws:bedrock:{region}:{account}:application-inference-profile/{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_ids_and_arns() {
        assert_eq!(
            ModelRef::parse("anthropic.claude-3-haiku-20240307-v1:0"),
            ModelRef::Foundation {
                model_id: "anthropic.claude-3-haiku-20240307-v1:0",
                region: None
            }
        );
        assert_eq!(
            ModelRef::parse("global.anthropic.claude-sonnet-4"),
            ModelRef::SystemProfile {
                model_id: "anthropic.claude-sonnet-4",
                region_account: None
            }
        );
        assert_eq!(
            ModelRef::parse(
                "arn:aws:bedrock:eu-west-1::foundation-model/anthropic.claude-3-haiku-20240307-v1:0"
            ),
            ModelRef::Foundation {
                model_id: "anthropic.claude-3-haiku-20240307-v1:0",
                region: Some("eu-west-1")
            }
        );
        assert_eq!(
            ModelRef::parse("arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.m:0"),
            ModelRef::SystemProfile {
                model_id: "m:0",
                region_account: Some(("us-east-1", "123456789012"))
            }
        );
        let app = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc";
        assert_eq!(
            ModelRef::parse(app),
            ModelRef::ApplicationProfile { arn: app }
        );
        assert_eq!(
            ModelRef::parse("arn:aws:bedrock:us-east-1:123456789012:inference-profile/xx.m"),
            ModelRef::OtherArn
        );
        assert_eq!(
            ModelRef::parse("arn:aws:s3:::bucket/foundation-model/m"),
            ModelRef::OtherArn
        );
    }
}
