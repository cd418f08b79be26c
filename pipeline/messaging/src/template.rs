//! Message templates: one file per template and channel, rendered with
//! minijinja from the firing's columns, the profile and computed traits.
//!
//! `templates/<name>.<channel>` (channel `email`, `sms`, `whatsapp`,
//! `push`, `webhook`). A file starts with `Key: value` header lines, then a
//! blank line, then the body:
//!
//! ```text
//! Subject: {{ profile.first_name | default("Hello") }}, your cart is waiting
//!
//! You left {{ items }} item(s) worth {{ cart_value }} in your cart.
//! ```
//!
//! Headers by channel: email `Subject` (required); push `Title` (required);
//! WhatsApp `Template` and `Language` (the approved template; each body line
//! is one body parameter). Everything is a template, headers included.
//!
//! Names a template can use: the firing's columns (`cart_value`, …),
//! `profile.*` (the customer's traits; any key, so give a fallback with
//! `default`), `customer.*` (computed traits: the columns of the rules'
//! `customers` table), and `message.*` (`rule`, `step`, `arm`, `variant`,
//! `channel`, `send_id`, `unsubscribe_url`). [`Templates::check`] rejects any
//! other name before a rule goes live.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use minijinja::Environment;
use serde_json::{Map, Value};

/// A problem in a template file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: {message}", file.display())]
pub struct TemplateError {
    /// The file (or the expected path of a missing one).
    pub file: PathBuf,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// The channels a template file can be for.
pub const CHANNELS: [&str; 5] = ["email", "sms", "whatsapp", "push", "webhook"];

/// Names under `message.*`.
pub const MESSAGE_FIELDS: [&str; 7] = [
    "rule",
    "step",
    "arm",
    "variant",
    "channel",
    "send_id",
    "unsubscribe_url",
];

/// A rendered message.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rendered {
    /// Rendered header values (`Subject`, `Title`, `Template`, …).
    pub headers: BTreeMap<String, String>,
    /// Rendered body.
    pub body: String,
}

impl Rendered {
    /// A header's value.
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers.get(key).map(String::as_str)
    }

    /// WhatsApp body parameters: one per non-empty body line.
    pub fn parameters(&self) -> Vec<&str> {
        self.body
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect()
    }
}

struct Source {
    file: PathBuf,
    headers: Vec<(String, String)>,
    body: String,
}

/// The templates folder, parsed.
pub struct Templates {
    dir: PathBuf,
    env: Environment<'static>,
    /// (name, channel) -> header keys in order.
    files: BTreeMap<(String, String), (PathBuf, Vec<String>)>,
}

fn key(name: &str, channel: &str, part: &str) -> String {
    format!("{name}.{channel}#{part}")
}

impl Templates {
    /// The folder the templates were loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Loads every `<name>.<channel>` file in `dir`; errors name the file.
    pub fn load(dir: &Path) -> Result<Templates, Vec<TemplateError>> {
        let mut env = Environment::new();
        // A missing trait renders empty (and `default(...)` supplies the
        // fallback); unknown names are caught by `check` beforehand.
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
        env.set_keep_trailing_newline(true);
        let mut files = BTreeMap::new();
        let mut errors = Vec::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                return Err(vec![TemplateError {
                    file: dir.to_path_buf(),
                    message: format!("cannot read the templates folder: {e}"),
                }]);
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| match e {
                Ok(e) => Some(e.path()),
                Err(e) => {
                    errors.push(TemplateError {
                        file: dir.to_path_buf(),
                        message: format!("cannot list an entry of the templates folder: {e}"),
                    });
                    None
                }
            })
            .collect();
        paths.sort();
        for path in paths {
            let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if file_name.starts_with('.') || path.is_dir() || file_name.ends_with(".md") {
                continue;
            }
            let Some((name, channel)) = file_name.rsplit_once('.') else {
                continue;
            };
            let err = |message: String| TemplateError {
                file: path.clone(),
                message,
            };
            if !CHANNELS.contains(&channel) {
                errors.push(err(format!(
                    "unknown channel {channel:?}; name files <template>.<channel> with channel one of {}",
                    CHANNELS.join(", ")
                )));
                continue;
            }
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(err(format!("cannot read: {e}")));
                    continue;
                }
            };
            let src = match parse(&path, &text) {
                Ok(s) => s,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            let mut keys = Vec::new();
            let body = ("body".to_string(), src.body.clone());
            for (k, v) in src.headers.iter().chain([&body]) {
                if let Err(e) = env.add_template_owned(key(name, channel, k), v.clone()) {
                    errors.push(err(format!("{k}: {e}")));
                }
                if k != "body" {
                    keys.push(k.clone());
                }
            }
            let required: &[&str] = match channel {
                "email" => &["Subject"],
                "push" => &["Title"],
                "whatsapp" => &["Template", "Language"],
                _ => &[],
            };
            for r in required {
                if !keys.iter().any(|k| k == r) {
                    errors.push(err(format!(
                        "a {channel} template needs a `{r}:` header line before the blank line"
                    )));
                }
            }
            files.insert((name.to_string(), channel.to_string()), (src.file, keys));
        }
        if errors.is_empty() {
            Ok(Templates {
                dir: dir.to_path_buf(),
                env,
                files,
            })
        } else {
            Err(errors)
        }
    }

    /// Whether a template exists for (name, channel).
    pub fn has(&self, name: &str, channel: &str) -> bool {
        self.files
            .contains_key(&(name.to_string(), channel.to_string()))
    }

    /// Checks that (name, channel) exists and uses only known names:
    /// `columns` (the rule's output), `customer.<computed>` for
    /// `computed`, `profile.*` and `message.*`.
    pub fn check(
        &self,
        name: &str,
        channel: &str,
        columns: &BTreeSet<String>,
        computed: &BTreeSet<String>,
    ) -> Vec<TemplateError> {
        let Some((file, headers)) = self.files.get(&(name.to_string(), channel.to_string())) else {
            return vec![TemplateError {
                file: self.dir.join(format!("{name}.{channel}")),
                message: format!(
                    "missing: the rule sends template {name:?} on {channel}; create this file"
                ),
            }];
        };
        let mut errors = Vec::new();
        for part in headers.iter().map(String::as_str).chain(["body"]) {
            let Ok(t) = self.env.get_template(&key(name, channel, part)) else {
                continue;
            };
            for var in t.undeclared_variables(true) {
                let mut it = var.splitn(2, '.');
                let head = it.next().unwrap_or_default();
                let rest = it.next();
                let ok = match (head, rest) {
                    ("profile", _) => true,
                    ("customer", None) | ("message", None) => true,
                    ("customer", Some(f)) => computed.contains(f),
                    ("message", Some(f)) => MESSAGE_FIELDS.contains(&f),
                    (c, _) => columns.contains(c),
                };
                if !ok {
                    let known: Vec<&str> = columns.iter().map(String::as_str).collect();
                    errors.push(TemplateError {
                        file: file.clone(),
                        message: format!(
                            "{part}: unknown name `{var}`; the rule's columns are [{}], plus profile.*, customer.* ({}) and message.* ({})",
                            known.join(", "),
                            computed.iter().cloned().collect::<Vec<_>>().join(", "),
                            MESSAGE_FIELDS.join(", ")
                        ),
                    });
                }
            }
        }
        errors
    }

    /// Renders (name, channel) with `context`.
    pub fn render(
        &self,
        name: &str,
        channel: &str,
        context: &Map<String, Value>,
    ) -> Result<Rendered, String> {
        let (_, headers) = self
            .files
            .get(&(name.to_string(), channel.to_string()))
            .ok_or_else(|| format!("no template {name}.{channel}"))?;
        // A null (a firing column or trait without a value) renders like a
        // missing name, so `default(...)` covers both; otherwise it would
        // print "None".
        let context = without_nulls(context);
        let context = &context;
        let mut out = Rendered::default();
        for part in headers.iter().map(String::as_str).chain(["body"]) {
            let t = self
                .env
                .get_template(&key(name, channel, part))
                .map_err(|e| e.to_string())?;
            let text = t
                .render(context)
                .map_err(|e| format!("{name}.{channel} {part}: {e}"))?;
            if part == "body" {
                out.body = text;
            } else {
                out.headers
                    .insert(part.to_string(), text.trim().to_string());
            }
        }
        Ok(out)
    }
}

fn without_nulls(m: &Map<String, Value>) -> Map<String, Value> {
    m.iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| match v {
            Value::Object(o) => (k.clone(), Value::Object(without_nulls(o))),
            _ => (k.clone(), v.clone()),
        })
        .collect()
}

fn parse(path: &Path, text: &str) -> Result<Source, TemplateError> {
    let mut headers = Vec::new();
    let mut lines = text.lines().enumerate();
    let mut body_start = None;
    for (i, line) in lines.by_ref() {
        if line.trim().is_empty() {
            body_start = Some(i + 1);
            break;
        }
        let Some((k, v)) = line.split_once(':') else {
            return Err(TemplateError {
                file: path.to_path_buf(),
                message: format!(
                    "line {}: header lines are `Key: value`, then a blank line, then the body",
                    i + 1
                ),
            });
        };
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let body = body_start
        .map(|s| text.lines().skip(s).collect::<Vec<_>>().join("\n"))
        .unwrap_or_default();
    Ok(Source {
        file: path.to_path_buf(),
        headers,
        body: body.trim_end().to_string() + "\n",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dir(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        for (n, t) in files {
            std::fs::write(d.path().join(n), t).expect("write");
        }
        d
    }

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn renders_headers_and_body_with_fallbacks() {
        let d = dir(&[(
            "cart.email",
            "Subject: {{ profile.first_name | default(\"Hello\") }}, your cart\n\nYou left {{ items }} item(s) worth {{ cart_value }}.\nTop: {{ customer.top_category }}\n",
        )]);
        let t = Templates::load(d.path()).expect("load");
        let ctx = json!({"items": 2, "cart_value": 49.5, "profile": {}, "customer": {"top_category": "Home"}});
        let r = t
            .render("cart", "email", ctx.as_object().expect("obj"))
            .expect("render");
        assert_eq!(r.header("Subject"), Some("Hello, your cart"));
        assert_eq!(r.body, "You left 2 item(s) worth 49.5.\nTop: Home\n");
        let ctx = json!({"items": 1, "cart_value": 5, "profile": {"first_name": "Ana"}});
        let r = t
            .render("cart", "email", ctx.as_object().expect("obj"))
            .expect("render");
        assert_eq!(r.header("Subject"), Some("Ana, your cart"));
    }

    #[test]
    fn check_names_unknown_fields_missing_files_and_headers() {
        let d = dir(&[
            (
                "cart.email",
                "Subject: Hi {{ frist_name }}\n\n{{ customer.lifetime_valeu }} {{ message.send_id }} {{ profile.anything }}\n",
            ),
            ("cart.push", "\n{{ items }}\n"),
        ]);
        let errors = Templates::load(d.path()).err().expect("push needs a Title");
        assert!(errors[0].message.contains("`Title:`"), "{errors:?}");

        std::fs::write(d.path().join("cart.push"), "Title: Cart\n\n{{ items }}\n").expect("write");
        let t = Templates::load(d.path()).expect("load");
        let errors = t.check("cart", "email", &set(&["items"]), &set(&["lifetime_value"]));
        let messages: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(errors.len(), 2, "{messages:?}");
        assert!(messages.iter().any(|m| m.contains("`frist_name`")));
        assert!(
            messages
                .iter()
                .any(|m| m.contains("`customer.lifetime_valeu`"))
        );
        assert!(
            t.check("cart", "push", &set(&["items"]), &set(&[]))
                .is_empty()
        );
        let missing = t.check("cart", "sms", &set(&[]), &set(&[]));
        assert!(missing[0].message.contains("create this file"));
    }
}
