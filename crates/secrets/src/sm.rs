//! AWS Secrets Manager over its JSON API, signed with SigV4 (object_store's signer)
//! from the standard `AWS_*` environment. Versions are ordered by the `georep-N`
//! staging label georep gives each version it writes (a version without a label is
//! "deprecated" and may be pruned by AWS, so the carried ones keep theirs), then
//! AWSPREVIOUS, then AWSCURRENT. Attributes are tags on the secret, so they describe
//! the newest version.

use std::collections::BTreeMap;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde_json::{json, Value as Json};

use crate::error::{Result, SecretsError};
use crate::model::{Attrs, Entry, Shape, Value, Version, VersionMeta, TAG_NAME};
use crate::vault::{Http, Versions, WriteMeta};

/// Labels georep gives the versions it writes: `georep-<seq>`.
const LABEL: &str = "georep-";

pub struct Sm {
    pub(crate) http: Http,
    region: String,
    endpoint: String,
    cred: (String, String, Option<String>),
}

impl Sm {
    pub(crate) fn new(http: Http, region: &str) -> Result<Self> {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        // Only the service's own override: AWS_ENDPOINT_URL often points at an S3
        // look-alike (MinIO) that must not receive Secrets Manager calls.
        let endpoint = get("AWS_ENDPOINT_URL_SECRETS_MANAGER")
            .unwrap_or_else(|| format!("https://secretsmanager.{region}.amazonaws.com"))
            .trim_end_matches('/')
            .to_string();
        let plain_ok = match url::Url::parse(&endpoint) {
            Ok(u) if u.scheme() == "https" => true,
            Ok(u) if u.scheme() == "http" => {
                let host = u.host_str().unwrap_or_default();
                let bare = host.trim_start_matches('[').trim_end_matches(']');
                bare == "localhost"
                    || bare
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
            _ => false,
        };
        if !plain_ok {
            return Err(SecretsError::Config(format!(
                "vault '{}': AWS_ENDPOINT_URL_SECRETS_MANAGER must be an https:// URL (http:// only to a loopback address: signed requests and session tokens would cross the network in clear)",
                http.vault
            )));
        }
        let cred = match (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")) {
            (Some(k), Some(s)) => (k, s, get("AWS_SESSION_TOKEN")),
            _ => {
                return Err(SecretsError::Config(format!(
                    "vault '{}': no AWS credentials: export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary ones)",
                    http.vault
                )))
            }
        };
        Ok(Self {
            http,
            region: region.to_string(),
            endpoint,
            cred,
        })
    }

    /// One API call: `target` is the operation (`ListSecrets`, ...).
    async fn call(&self, target: &str, body: Json) -> Result<Json> {
        use object_store::aws::{AwsAuthorizer, AwsCredential};
        let (key_id, secret, token) = &self.cred;
        let cred = AwsCredential {
            key_id: key_id.clone(),
            secret_key: secret.clone(),
            token: token.clone(),
        };
        let bytes = bytes::Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        let url = format!("{}/", self.endpoint);
        let mut req = http::Request::builder()
            .method(http::Method::POST)
            .uri(&url)
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amz-target", format!("secretsmanager.{target}"))
            .body(object_store::client::HttpRequestBody::from(bytes.clone()))
            .map_err(|e| SecretsError::Config(format!("cannot build a request: {e}")))?;
        AwsAuthorizer::new(&cred, "secretsmanager", &self.region)
            .try_authorize(&mut req, None)
            .map_err(|e| SecretsError::Config(format!("cannot sign a request: {e}")))?;
        let mut rb = self.http.client.post(&url).body(bytes);
        for (k, v) in req.headers() {
            rb = rb.header(k, v);
        }
        let a = self.http.send(rb, target).await?;
        let v = a.json();
        if a.status == 200 {
            return Ok(v);
        }
        let kind = v["__type"]
            .as_str()
            .unwrap_or_default()
            .rsplit('#')
            .next()
            .unwrap_or_default()
            .to_string();
        let msg = v["message"]
            .as_str()
            .or_else(|| v["Message"].as_str())
            .unwrap_or_default();
        let vault = self.http.vault.clone();
        let detail = format!("{target}: {kind}: {}", crate::vault::one_line(msg));
        Err(match kind.as_str() {
            "ResourceNotFoundException" => SecretsError::NotFound { vault, detail },
            "UnrecognizedClientException"
            | "InvalidSignatureException"
            | "AccessDeniedException"
            | "ExpiredTokenException"
            | "IncompleteSignature" => SecretsError::Auth { vault, detail },
            "ThrottlingException" | "TooManyRequestsException" => SecretsError::Throttled {
                vault,
                detail,
                retry_after: a.retry_after,
            },
            "InternalServiceError" => SecretsError::Vault { vault, detail },
            _ => self.http.fail(&a, target, &format!("{kind}: {msg}")),
        })
    }

    pub(crate) async fn check(&self) -> Result<()> {
        self.call("ListSecrets", json!({"MaxResults": 1}))
            .await
            .map(|_| ())
    }

    pub(crate) async fn list(&self) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let mut body = json!({"MaxResults": 100});
            if let Some(t) = &next {
                body["NextToken"] = json!(t);
            }
            let v = self.call("ListSecrets", body).await?;
            for s in v["SecretList"].as_array().into_iter().flatten() {
                if !s["DeletedDate"].is_null() {
                    continue;
                }
                let Some(name) = s["Name"].as_str() else {
                    continue;
                };
                let current = s["SecretVersionsToStages"]
                    .as_object()
                    .and_then(|m| {
                        m.iter().find(|(_, st)| {
                            st.as_array()
                                .is_some_and(|a| a.iter().any(|x| x == "AWSCURRENT"))
                        })
                    })
                    .map(|(id, _)| id.clone())
                    .unwrap_or_default();
                let tags = tags(&s["Tags"]);
                out.push(Entry {
                    name: name.to_string(),
                    fingerprint: format!("{current}:{}", s["LastChangedDate"]),
                    origin: tags.get(TAG_NAME).cloned(),
                    coarse: None,
                });
            }
            match v["NextToken"].as_str() {
                Some(t) if !t.is_empty() => next = Some(t.to_string()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub(crate) async fn entry(&self, name: &str) -> Result<Option<Entry>> {
        let d = self.describe(name).await?;
        let current = d["VersionIdsToStages"]
            .as_object()
            .and_then(|m| {
                m.iter().find(|(_, st)| {
                    st.as_array()
                        .is_some_and(|a| a.iter().any(|x| x == "AWSCURRENT"))
                })
            })
            .map(|(id, _)| id.clone())
            .unwrap_or_default();
        let tags = tags(&d["Tags"]);
        Ok(Some(Entry {
            name: name.to_string(),
            fingerprint: format!("{current}:{}", d["LastChangedDate"]),
            origin: tags.get(TAG_NAME).cloned(),
            coarse: None,
        }))
    }

    async fn describe(&self, name: &str) -> Result<Json> {
        let v = self
            .call("DescribeSecret", json!({"SecretId": name}))
            .await?;
        if !v["DeletedDate"].is_null() {
            return Err(SecretsError::NotFound {
                vault: self.http.vault.clone(),
                detail: format!("'{name}' is scheduled for deletion"),
            });
        }
        Ok(v)
    }

    pub(crate) async fn versions(&self, name: &str) -> Result<Versions> {
        let d = self.describe(name).await?;
        let mut ranked: Vec<((u8, u64, usize), VersionMeta)> = Vec::new();
        for (i, (id, stages)) in d["VersionIdsToStages"]
            .as_object()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let stages: Vec<&str> = stages
                .as_array()
                .map(|a| a.iter().filter_map(Json::as_str).collect())
                .unwrap_or_default();
            if stages.is_empty() {
                continue;
            }
            let seq = stages
                .iter()
                .filter_map(|s| s.strip_prefix(LABEL)?.parse::<u64>().ok())
                .max();
            let rank = if stages.contains(&"AWSCURRENT") {
                3
            } else if stages.contains(&"AWSPREVIOUS") {
                2
            } else {
                1
            };
            // georep's sequence orders what it wrote; AWS's labels the rest.
            let key = match seq {
                Some(s) => (0, s, i),
                None => (rank, 0, i),
            };
            ranked.push((
                key,
                VersionMeta {
                    id: id.clone(),
                    created: None,
                    readable: true,
                },
            ));
        }
        if ranked.is_empty() {
            return Err(SecretsError::NotFound {
                vault: self.http.vault.clone(),
                detail: format!("'{name}' has no version"),
            });
        }
        // A version georep wrote that is also current sorts by its sequence, which
        // is the newest; foreign versions after georep's would mean drift anyway.
        ranked.sort_by_key(|(k, _)| *k);
        let current = ranked.iter().position(|(k, v)| {
            k.0 == 3
                || d["VersionIdsToStages"][&v.id]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == "AWSCURRENT"))
        });
        if let Some(i) = current {
            // AWSCURRENT is the newest whatever the labels say.
            let cur = ranked.remove(i);
            ranked.push(cur);
        }
        let tags = tags(&d["Tags"]);
        let attrs = Attrs::from_tags(&tags);
        Ok(Versions {
            versions: ranked.into_iter().map(|(_, v)| v).collect(),
            secret_attrs: Some(attrs),
        })
    }

    pub(crate) async fn read(&self, name: &str, id: &str) -> Result<Version> {
        let v = self
            .call("GetSecretValue", json!({"SecretId": name, "VersionId": id}))
            .await?;
        let (value, shape) = if let Some(s) = v["SecretString"].as_str() {
            (Value::new(s.as_bytes().to_vec()), Shape::Text)
        } else if let Some(b) = v["SecretBinary"].as_str() {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|_| SecretsError::Vault {
                    vault: self.http.vault.clone(),
                    detail: format!("'{name}' version {id}: SecretBinary is not base64"),
                })?;
            (Value::new(bytes), Shape::Binary)
        } else {
            return Err(SecretsError::Vault {
                vault: self.http.vault.clone(),
                detail: format!("'{name}' version {id} has no value"),
            });
        };
        let created = v["CreatedDate"]
            .as_f64()
            .and_then(|s| DateTime::<Utc>::from_timestamp(s as i64, 0));
        let mut attrs = Attrs::enabled();
        attrs.shape = shape;
        Ok(Version {
            id: id.to_string(),
            value,
            attrs,
            created,
        })
    }

    pub(crate) async fn write(
        &self,
        name: &str,
        value: &Value,
        meta: &WriteMeta<'_>,
        token: &str,
    ) -> Result<String> {
        let mut body = json!({
            "SecretId": name,
            "ClientRequestToken": token,
            "VersionStages": ["AWSCURRENT", format!("{LABEL}{}", meta.seq)],
        });
        match (meta.attrs.shape, value.as_text()) {
            (Shape::Binary, _) | (_, None) => {
                body["SecretBinary"] =
                    json!(base64::engine::general_purpose::STANDARD.encode(value.expose()))
            }
            (_, Some(s)) => body["SecretString"] = json!(s),
        }
        let mut put = self.call("PutSecretValue", body.clone()).await;
        if matches!(&put, Err(SecretsError::Refused { detail, .. }) if detail.contains("delet")) {
            // Scheduled for deletion (deletes = "disable", or by hand): restored first.
            self.call("RestoreSecret", json!({"SecretId": name}))
                .await?;
            put = self.call("PutSecretValue", body.clone()).await;
        }
        let answer = match put {
            Err(SecretsError::NotFound { .. }) => {
                let mut create = json!({
                    "Name": name,
                    "ClientRequestToken": token,
                    "Tags": tag_list(&self.tags(meta)),
                });
                for k in ["SecretString", "SecretBinary"] {
                    if !body[k].is_null() {
                        create[k] = body[k].clone();
                    }
                }
                let v = self.call("CreateSecret", create).await?;
                // CreateSecret cannot take labels; the first version gets its own.
                self.call(
                    "UpdateSecretVersionStage",
                    json!({"SecretId": name, "VersionStage": format!("{LABEL}{}", meta.seq), "MoveToVersionId": v["VersionId"]}),
                )
                .await?;
                return v["VersionId"].as_str().map(str::to_string).ok_or_else(|| {
                    SecretsError::Vault {
                        vault: self.http.vault.clone(),
                        detail: format!("creating '{name}' gave no version id"),
                    }
                });
            }
            other => other?,
        };
        self.set_attrs(name, meta).await?;
        answer["VersionId"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| SecretsError::Vault {
                vault: self.http.vault.clone(),
                detail: format!("writing '{name}' gave no version id"),
            })
    }

    fn tags(&self, meta: &WriteMeta<'_>) -> BTreeMap<String, String> {
        let mut t = meta.attrs.to_tags(false);
        if let Some(o) = meta.origin {
            t.insert(TAG_NAME.into(), o.to_string());
        }
        t
    }

    /// Tags describe the newest version: georep's keys not set now are removed.
    pub(crate) async fn set_attrs(&self, name: &str, meta: &WriteMeta<'_>) -> Result<()> {
        let want = self.tags(meta);
        let mut d = self
            .call("DescribeSecret", json!({"SecretId": name}))
            .await?;
        if !d["DeletedDate"].is_null() {
            // Written again after `deletes` scheduled it for deletion: restored, so
            // the version just written is usable.
            self.call("RestoreSecret", json!({"SecretId": name}))
                .await?;
            d = self.describe(name).await?;
        }
        let have = tags(&d["Tags"]);
        // Only georep's own keys are taken off: other tags belong to the account (and
        // `aws:` ones cannot be removed at all).
        let stale: Vec<&String> = have
            .keys()
            .filter(|k| k.starts_with(crate::model::RESERVED) && !want.contains_key(*k))
            .collect();
        if !stale.is_empty() {
            self.call("UntagResource", json!({"SecretId": name, "TagKeys": stale}))
                .await?;
        }
        if want.iter().any(|(k, v)| have.get(k) != Some(v)) {
            self.call(
                "TagResource",
                json!({"SecretId": name, "Tags": tag_list(&want)}),
            )
            .await?;
        }
        Ok(())
    }

    /// Gives each carried version (sequence, id) its `georep-N` label and takes
    /// georep's labels off every other version, so AWS may prune those. (Moving
    /// AWSCURRENT may drop other labels from the old current version.)
    pub(crate) async fn trim(&self, name: &str, keep: &[(u64, String)]) -> Result<()> {
        let d = self.describe(name).await?;
        let stages = &d["VersionIdsToStages"];
        for (id, labels) in stages.as_object().into_iter().flatten() {
            for l in labels
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Json::as_str)
            {
                let Some(seq) = l.strip_prefix(LABEL).and_then(|n| n.parse::<u64>().ok()) else {
                    continue;
                };
                if !keep.iter().any(|(s, k)| *s == seq && k == id) {
                    self.call(
                        "UpdateSecretVersionStage",
                        json!({"SecretId": name, "VersionStage": l, "RemoveFromVersionId": id}),
                    )
                    .await?;
                }
            }
        }
        for (seq, id) in keep {
            let label = format!("{LABEL}{seq}");
            let has = stages[id.as_str()]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(label.as_str())));
            if !has {
                self.call(
                    "UpdateSecretVersionStage",
                    json!({"SecretId": name, "VersionStage": label, "MoveToVersionId": id}),
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Secrets Manager cannot disable a secret: it is tagged disabled and scheduled for
    /// deletion with the longest recovery window (30 days; `RestoreSecret` undoes it).
    pub(crate) async fn disable(&self, name: &str) -> Result<()> {
        self.call(
            "TagResource",
            json!({"SecretId": name, "Tags": [{"Key": crate::model::TAG_ENABLED, "Value": "false"}]}),
        )
        .await?;
        self.delete(name).await
    }

    pub(crate) async fn delete(&self, name: &str) -> Result<()> {
        match self
            .call(
                "DeleteSecret",
                json!({"SecretId": name, "RecoveryWindowInDays": 30}),
            )
            .await
        {
            Ok(_) | Err(SecretsError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn tags(v: &Json) -> BTreeMap<String, String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| {
            Some((
                t["Key"].as_str()?.to_string(),
                t["Value"].as_str()?.to_string(),
            ))
        })
        .collect()
}

fn tag_list(t: &BTreeMap<String, String>) -> Json {
    Json::Array(
        t.iter()
            .map(|(k, v)| json!({"Key": k, "Value": v}))
            .collect(),
    )
}
