//! Application inference profiles: the records behind the control-plane routes, and Bedrock's
//! rules for them (names unique per region, idempotent `clientRequestToken`, what `copyFrom` may
//! name, the field constraints of the API reference). Profiles live in memory, and in a state
//! file when one is configured: Bedrock keeps profiles, so a tenant provisioned before an emulator
//! restart must still be callable after it.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use axum::http::StatusCode;
use sha2::{Digest, Sha256};

use crate::faults::ServiceError;
use crate::models::{ModelRef, application_profile_arn, foundation_model_arn};

/// Bedrock's cap on tags per resource.
const MAX_TAGS: usize = 200;

/// Characters of a generated profile id (Bedrock's ids are 12 lowercase letters and digits).
const ID_ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Tag {
    pub(crate) key: String,
    pub(crate) value: String,
}

/// One application inference profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Profile {
    /// Creation order: the list order and what a `nextToken` points at.
    sequence: u64,
    pub(crate) id: String,
    pub(crate) arn: String,
    pub(crate) region: String,
    pub(crate) name: String,
    pub(crate) description: Option<String>,
    /// The foundation-model ARN the profile lists in `models`.
    pub(crate) model_arn: String,
    /// The foundation model calls through the profile run on.
    pub(crate) model_id: String,
    pub(crate) tags: Vec<Tag>,
    pub(crate) created_at: SystemTime,
    client_request_token: Option<String>,
}

/// A `CreateInferenceProfile` request, already read off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewProfile {
    pub(crate) region: String,
    pub(crate) name: String,
    pub(crate) description: Option<String>,
    pub(crate) client_request_token: Option<String>,
    pub(crate) copy_from: String,
    pub(crate) tags: Vec<Tag>,
}

/// One page of `ListInferenceProfiles`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProfilePage {
    pub(crate) profiles: Vec<Profile>,
    pub(crate) next_token: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Profiles {
    next_sequence: u64,
    /// In creation order.
    all: Vec<Profile>,
}

#[derive(Debug)]
pub(crate) struct ProfileStore {
    account_id: String,
    profiles: Mutex<Profiles>,
    /// Where every change is written; `None` keeps profiles in memory only.
    state_file: Option<PathBuf>,
}

/// Reads the profiles a previous run saved; no file is no profiles.
fn load(path: &Path) -> Result<Profiles, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| e.to_string()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Profiles::default()),
        Err(error) => Err(error.to_string()),
    }
}

/// Writes the profiles whole: to a temporary file, then renamed over the old one, so a crash
/// leaves the old or the new state, never half of one.
fn save(path: &Path, profiles: &Profiles) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(profiles).map_err(std::io::Error::other)?;
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, path)
}

impl ProfileStore {
    /// A store of `account_id`'s profiles, loaded from and saved to `state_file` when given. A
    /// state file that cannot be read is reported and left alone (the store then keeps its
    /// profiles in memory only, rather than overwrite what an operator may want back).
    pub(crate) fn new(account_id: String, state_file: Option<PathBuf>) -> Self {
        let (profiles, state_file) = match state_file {
            None => (Profiles::default(), None),
            Some(path) => match load(&path) {
                Ok(profiles) => {
                    if !profiles.all.is_empty() {
                        tracing::info!(
                            profiles = profiles.all.len(),
                            file = %path.display(),
                            "inference profiles restored"
                        );
                    }
                    (profiles, Some(path))
                }
                Err(error) => {
                    tracing::error!(
                        %error,
                        file = %path.display(),
                        "cannot read the saved inference profiles; keeping profiles in memory only"
                    );
                    (Profiles::default(), None)
                }
            },
        };
        Self {
            account_id,
            profiles: Mutex::new(profiles),
            state_file,
        }
    }

    /// Saves the profiles after a change, when a state file is configured.
    fn persist(&self, profiles: &Profiles) {
        if let Some(path) = &self.state_file
            && let Err(error) = save(path, profiles)
        {
            tracing::error!(%error, file = %path.display(), "cannot save the inference profiles");
        }
    }

    fn lock(&self) -> MutexGuard<'_, Profiles> {
        // Every change below is one push, remove or field assignment, so a panic elsewhere cannot
        // leave the list half-changed: a poisoned lock still guards a consistent list.
        self.profiles.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `CreateInferenceProfile`: the new profile, or the one an earlier request with the same
    /// `clientRequestToken` created.
    pub(crate) fn create(&self, new: NewProfile, now: SystemTime) -> Result<Profile, ServiceError> {
        check_name(&new.name)?;
        if let Some(description) = &new.description {
            check_description(description)?;
        }
        if let Some(token) = &new.client_request_token {
            check_client_request_token(token)?;
        }
        check_tags(&new.tags)?;
        let (model_id, model_arn) = self.source_model(&new.region, &new.copy_from)?;

        let mut profiles = self.lock();
        if let Some(token) = &new.client_request_token
            && let Some(earlier) = profiles
                .all
                .iter()
                .find(|p| p.region == new.region && p.client_request_token.as_ref() == Some(token))
        {
            return Ok(earlier.clone());
        }
        if profiles
            .all
            .iter()
            .any(|p| p.region == new.region && p.name == new.name)
        {
            return Err(ServiceError::conflict(format!(
                "An inference profile named {} already exists in {}",
                new.name, new.region
            )));
        }
        let sequence = profiles.next_sequence;
        profiles.next_sequence += 1;
        let id = profile_id(
            &self.account_id,
            &new.region,
            &new.name,
            sequence,
            &profiles.all,
        );
        let profile = Profile {
            sequence,
            arn: application_profile_arn(&new.region, &self.account_id, &id),
            id,
            region: new.region,
            name: new.name,
            description: new.description,
            model_arn,
            model_id,
            tags: new.tags,
            created_at: now,
            client_request_token: new.client_request_token,
        };
        profiles.all.push(profile.clone());
        self.persist(&profiles);
        Ok(profile)
    }

    /// What `copyFrom` names: the foundation model id and its ARN in `region`. Bedrock takes a
    /// foundation model or a system-defined profile of the caller's region and account.
    fn source_model(
        &self,
        region: &str,
        copy_from: &str,
    ) -> Result<(String, String), ServiceError> {
        let model_id = match ModelRef::parse(copy_from) {
            ModelRef::Foundation {
                model_id,
                region: Some(arn_region),
            } if arn_region == region => model_id,
            ModelRef::SystemProfile {
                model_id,
                region_account: Some((arn_region, account)),
            } if arn_region == region && account == self.account_id => model_id,
            ModelRef::Foundation { .. }
            | ModelRef::SystemProfile { .. }
            | ModelRef::ApplicationProfile { .. }
            | ModelRef::OtherArn => {
                return Err(ServiceError::validation(format!(
                    "modelSource.copyFrom: {copy_from} is not the ARN of a foundation model \
                     (arn:aws:bedrock:{region}::foundation-model/...) or of a system-defined \
                     inference profile (arn:aws:bedrock:{region}:{}:inference-profile/us....) \
                     in {region}",
                    self.account_id
                )));
            }
        };
        Ok((model_id.to_owned(), foundation_model_arn(region, model_id)))
    }

    /// `GetInferenceProfile`: by id or by ARN, in the caller's region.
    pub(crate) fn get(&self, region: &str, identifier: &str) -> Result<Profile, ServiceError> {
        self.lock()
            .all
            .iter()
            .find(|p| p.region == region && (p.id == identifier || p.arn == identifier))
            .cloned()
            .ok_or_else(|| not_found(identifier))
    }

    /// `ListInferenceProfiles` of type `APPLICATION`, in creation order.
    pub(crate) fn list(
        &self,
        region: &str,
        max_results: usize,
        next_token: Option<&str>,
    ) -> Result<ProfilePage, ServiceError> {
        let from = match next_token {
            None => 0,
            Some(token) => token
                .parse::<u64>()
                .map_err(|_| ServiceError::validation(format!("nextToken: {token} is invalid")))?,
        };
        let profiles = self.lock();
        let mut rest = profiles
            .all
            .iter()
            .filter(|p| p.region == region && p.sequence >= from);
        let page: Vec<Profile> = rest.by_ref().take(max_results).cloned().collect();
        let next_token = rest.next().map(|p| p.sequence.to_string());
        Ok(ProfilePage {
            profiles: page,
            next_token,
        })
    }

    /// `DeleteInferenceProfile`: by id or by ARN, in the caller's region.
    pub(crate) fn delete(&self, region: &str, identifier: &str) -> Result<(), ServiceError> {
        let mut profiles = self.lock();
        let index = profiles
            .all
            .iter()
            .position(|p| p.region == region && (p.id == identifier || p.arn == identifier))
            .ok_or_else(|| not_found(identifier))?;
        profiles.all.remove(index);
        self.persist(&profiles);
        Ok(())
    }

    pub(crate) fn tags(&self, region: &str, arn: &str) -> Result<Vec<Tag>, ServiceError> {
        self.lock()
            .all
            .iter()
            .find(|p| p.region == region && p.arn == arn)
            .map(|p| p.tags.clone())
            .ok_or_else(|| not_found(arn))
    }

    /// `TagResource`: adds the tags, replacing the values of keys the profile already has.
    pub(crate) fn tag(&self, region: &str, arn: &str, tags: Vec<Tag>) -> Result<(), ServiceError> {
        check_tags(&tags)?;
        let mut profiles = self.lock();
        let profile = profiles
            .all
            .iter_mut()
            .find(|p| p.region == region && p.arn == arn)
            .ok_or_else(|| not_found(arn))?;
        let mut merged = profile.tags.clone();
        for tag in tags {
            match merged.iter_mut().find(|t| t.key == tag.key) {
                Some(existing) => existing.value = tag.value,
                None => merged.push(tag),
            }
        }
        if merged.len() > MAX_TAGS {
            return Err(too_many_tags());
        }
        profile.tags = merged;
        self.persist(&profiles);
        Ok(())
    }

    /// `UntagResource`: removes the keys; keys the profile does not have are ignored.
    pub(crate) fn untag(
        &self,
        region: &str,
        arn: &str,
        keys: &[String],
    ) -> Result<(), ServiceError> {
        let mut profiles = self.lock();
        let profile = profiles
            .all
            .iter_mut()
            .find(|p| p.region == region && p.arn == arn)
            .ok_or_else(|| not_found(arn))?;
        profile.tags.retain(|t| !keys.contains(&t.key));
        self.persist(&profiles);
        Ok(())
    }

    /// The foundation model behind an application profile ARN, in any region (the ARN names it).
    pub(crate) fn model_behind(&self, arn: &str) -> Option<String> {
        self.lock()
            .all
            .iter()
            .find(|p| p.arn == arn)
            .map(|p| p.model_id.clone())
    }
}

fn not_found(identifier: &str) -> ServiceError {
    ServiceError::not_found(format!("The inference profile {identifier} does not exist"))
}

fn too_many_tags() -> ServiceError {
    ServiceError::new(
        StatusCode::BAD_REQUEST,
        "TooManyTagsException",
        format!("A resource can have at most {MAX_TAGS} tags"),
    )
}

/// A 12-character id derived from the profile's identity, so runs are reproducible.
fn profile_id(account: &str, region: &str, name: &str, sequence: u64, taken: &[Profile]) -> String {
    let mut attempt = 0u64;
    loop {
        let mut hasher = Sha256::new();
        for part in [account, region, name] {
            hasher.update(part.as_bytes());
            hasher.update([0]);
        }
        hasher.update(sequence.to_be_bytes());
        hasher.update(attempt.to_be_bytes());
        let digest = hasher.finalize();
        let id: String = digest
            .iter()
            .take(12)
            .map(|b| char::from(ID_ALPHABET[usize::from(*b) % ID_ALPHABET.len()]))
            .collect();
        if !taken.iter().any(|p| p.id == id) {
            return id;
        }
        attempt += 1;
    }
}

/// Bedrock's `([lead][ _-]?)+`: lead characters, each optionally followed by one separator.
fn is_lead_separated(text: &str, is_lead: fn(char) -> bool) -> bool {
    let mut after_lead = false;
    for c in text.chars() {
        if is_lead(c) {
            after_lead = true;
        } else if after_lead && matches!(c, ' ' | '_' | '-') {
            after_lead = false;
        } else {
            return false;
        }
    }
    !text.is_empty()
}

fn check_name(name: &str) -> Result<(), ServiceError> {
    if (1..=64).contains(&name.chars().count())
        && is_lead_separated(name, |c| c.is_ascii_alphanumeric())
    {
        Ok(())
    } else {
        Err(ServiceError::validation(format!(
            "inferenceProfileName: {name:?} must be 1 to 64 characters matching ([0-9a-zA-Z][ _-]?)+"
        )))
    }
}

fn check_description(description: &str) -> Result<(), ServiceError> {
    if (1..=200).contains(&description.chars().count())
        && is_lead_separated(description, |c| {
            c.is_ascii_alphanumeric() || c == ':' || c == '.'
        })
    {
        Ok(())
    } else {
        Err(ServiceError::validation(format!(
            "description: {description:?} must be 1 to 200 characters matching ([0-9a-zA-Z:.][ _-]?)+"
        )))
    }
}

fn check_client_request_token(token: &str) -> Result<(), ServiceError> {
    let alphanumeric_ends = token.starts_with(|c: char| c.is_ascii_alphanumeric())
        && token.ends_with(|c: char| c.is_ascii_alphanumeric());
    if token.len() <= 256
        && alphanumeric_ends
        && token.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        Ok(())
    } else {
        Err(ServiceError::validation(format!(
            "clientRequestToken: {token:?} must be 1 to 256 characters matching [a-zA-Z0-9](-*[a-zA-Z0-9])*"
        )))
    }
}

fn check_tags(tags: &[Tag]) -> Result<(), ServiceError> {
    if tags.len() > MAX_TAGS {
        return Err(too_many_tags());
    }
    for tag in tags {
        if !(1..=128).contains(&tag.key.chars().count()) || tag.value.chars().count() > 256 {
            return Err(ServiceError::validation(format!(
                "tags: key {:?} must be 1 to 128 characters and its value at most 256",
                tag.key
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HAIKU: &str = "anthropic.claude-3-haiku-20240307-v1:0";

    fn new_profile(name: &str, copy_from: &str) -> NewProfile {
        NewProfile {
            region: "us-east-1".to_owned(),
            name: name.to_owned(),
            description: None,
            client_request_token: None,
            copy_from: copy_from.to_owned(),
            tags: Vec::new(),
        }
    }

    #[test]
    fn names_follow_bedrock_pattern() {
        assert!(check_name("tenant-acme_haiku 1").is_ok());
        assert!(check_name("a-").is_ok());
        assert!(check_name("-a").is_err());
        assert!(check_name("a--b").is_err());
        assert!(check_name("a.b").is_err());
        assert!(check_name("").is_err());
        assert!(check_name(&"a".repeat(65)).is_err());
        assert!(check_description("Tenant acme: model v1.0").is_ok());
        assert!(check_description("no, commas").is_err());
        assert!(check_client_request_token("0f8fad5b-d9cb-469f-a165-70867728950e").is_ok());
        assert!(check_client_request_token("bad_token").is_err());
    }

    #[test]
    fn list_pages_by_creation_order_within_the_region() {
        let store = ProfileStore::new("123456789012".to_owned(), None);
        let source = format!("arn:aws:bedrock:us-east-1::foundation-model/{HAIKU}");
        for name in ["a", "b", "c"] {
            store
                .create(new_profile(name, &source), SystemTime::UNIX_EPOCH)
                .unwrap();
        }
        let first = store.list("us-east-1", 2, None).unwrap();
        let names: Vec<_> = first.profiles.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        let second = store
            .list("us-east-1", 2, first.next_token.as_deref())
            .unwrap();
        let names: Vec<_> = second.profiles.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["c"]);
        assert_eq!(second.next_token, None);
        assert!(
            store
                .list("us-west-2", 10, None)
                .unwrap()
                .profiles
                .is_empty()
        );
    }

    #[test]
    fn ids_are_twelve_lowercase_alphanumerics() {
        let id = profile_id("123456789012", "us-east-1", "n", 0, &[]);
        assert_eq!(id.len(), 12);
        assert!(id.bytes().all(|b| ID_ALPHABET.contains(&b)));
    }
}
