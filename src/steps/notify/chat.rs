//! The message's chat form: a custom notification that AWS Chatbot (now Amazon Q Developer in
//! chat applications) renders in Slack, Microsoft Teams or Amazon Chime, published to the chat
//! topic when the stack has one (`ChatNotifications=Enabled`).
//!
//! The shape is the service's custom notification schema
//! (https://docs.aws.amazon.com/chatbot/latest/adminguide/custom-notifs.html): `version` "1.0" and
//! `source` "custom" required, `content.description` the text, `content.textType`
//! "client-markdown" (rendered in the chat application's own markdown), and `metadata.threadId`
//! grouping the messages of one finding in one thread. The schema documents no length limits; the
//! description is kept under Slack's 3,000 characters for a block of text, and lists bounded, so
//! that the card reads at a glance and the email keeps the whole report.

use serde::Serialize;

/// The most characters of a card's description.
pub const MAX_DESCRIPTION_CHARS: usize = 3000;
/// The most instances a card lists one by one; the rest are counted.
pub const MAX_LISTED: usize = 10;
const MAX_TITLE_CHARS: usize = 250;
const MAX_LINE_CHARS: usize = 500;

/// A chat card, before it is written as the schema's JSON.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Card {
    pub title: String,
    /// The description's lines, in the chat application's markdown, every value from the
    /// finding already escaped with [`escape`].
    pub lines: Vec<String>,
    pub next_steps: Vec<String>,
    pub keywords: Vec<String>,
    /// Messages of one finding share a thread.
    pub thread_id: Option<String>,
    pub event_type: String,
    pub related_resources: Vec<String>,
    pub context: Vec<(&'static str, String)>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Notification<'a> {
    version: &'static str,
    source: &'static str,
    content: Content<'a>,
    metadata: Metadata<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Content<'a> {
    text_type: &'static str,
    title: &'a str,
    description: String,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    next_steps: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    keywords: &'a [String],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Metadata<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    thread_id: Option<&'a str>,
    summary: &'a str,
    event_type: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    related_resources: &'a [String],
    additional_context: serde_json::Map<String, serde_json::Value>,
}

impl Card {
    /// The SNS message body for the chat topic: the notification's JSON.
    pub fn to_json(&self, summary: &str) -> String {
        let title: String = self.title.chars().take(MAX_TITLE_CHARS).collect();
        let notification = Notification {
            version: "1.0",
            source: "custom",
            content: Content {
                text_type: "client-markdown",
                title: &title,
                description: bounded(&self.lines),
                next_steps: &self.next_steps,
                keywords: &self.keywords,
            },
            metadata: Metadata {
                thread_id: self.thread_id.as_deref(),
                summary: &escape(summary),
                event_type: &self.event_type,
                related_resources: &self.related_resources,
                additional_context: self
                    .context
                    .iter()
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(escape(v))))
                    .collect(),
            },
        };
        serde_json::to_string(&notification).unwrap_or_default()
    }
}

/// The lines joined, cut on a line boundary under [`MAX_DESCRIPTION_CHARS`].
fn bounded(lines: &[String]) -> String {
    const CUT: &str = "... (cut here: the email has the whole report)";
    let mut out = String::new();
    let mut used = 0;
    for line in lines {
        let line: String = line.chars().take(MAX_LINE_CHARS).collect();
        let n = line.chars().count() + 1;
        if used + n + CUT.len() > MAX_DESCRIPTION_CHARS {
            out.push_str(CUT);
            return out;
        }
        out.push_str(&line);
        out.push('\n');
        used += n;
    }
    out.pop();
    out
}

/// A value from the finding (or a line quoting one) made inert in chat: Slack reads `<...>` as a
/// link or a mention (`<!channel>` notifies everyone) and asks for `&`, `<` and `>` to be escaped
/// (https://api.slack.com/reference/surfaces/formatting#escaping); a backtick would end a code
/// span, `](` would make a markdown link, and control characters have no place in a line.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '`' => out.push('\''),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    // `[text](url)` is a markdown link: the pair is broken apart, brackets alone are kept.
    out.replace("](", "] (")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_has_the_schema_fields_and_leaves_empty_ones_out() {
        let card = Card {
            title: "CONTAINED i-0123456789abcdef0".into(),
            lines: vec!["line one".into(), "line two".into()],
            thread_id: Some("f1".into()),
            event_type: "ec2-quarantine.contained".into(),
            context: vec![("account", "123456789012".into()), ("empty", String::new())],
            ..Card::default()
        };
        let v: serde_json::Value = serde_json::from_str(&card.to_json("the subject")).unwrap();
        assert_eq!(v["version"], "1.0");
        assert_eq!(v["source"], "custom");
        assert_eq!(v["content"]["textType"], "client-markdown");
        assert_eq!(v["content"]["description"], "line one\nline two");
        assert!(v["content"].get("nextSteps").is_none());
        assert_eq!(v["metadata"]["threadId"], "f1");
        assert_eq!(v["metadata"]["summary"], "the subject");
        assert_eq!(
            v["metadata"]["additionalContext"]["account"],
            "123456789012"
        );
        assert!(v["metadata"]["additionalContext"].get("empty").is_none());
    }

    #[test]
    fn a_long_description_is_cut_on_a_line_and_says_so() {
        let card = Card {
            lines: (0..500).map(|i| format!("line {i} of many")).collect(),
            ..Card::default()
        };
        let v: serde_json::Value = serde_json::from_str(&card.to_json("s")).unwrap();
        let d = v["content"]["description"].as_str().unwrap();
        assert!(d.chars().count() <= MAX_DESCRIPTION_CHARS, "{}", d.len());
        assert!(d.ends_with("the email has the whole report)"));
        assert!(d.lines().rev().nth(1).unwrap().ends_with("of many"));
    }

    #[test]
    fn finding_values_cannot_mention_link_or_format() {
        let e = escape("<!channel> `x` [a](b) <http://evil|click>\n&");
        assert!(!e.contains('<') && !e.contains('>') && !e.contains('`'));
        assert!(!e.contains('\n') && !e.contains("]("));
        assert_eq!(escape("[CONTAINED] i-1"), "[CONTAINED] i-1");
        assert!(e.contains("&lt;!channel&gt;") && e.ends_with("&amp;"));
        assert_eq!(escape("app_role-1"), "app_role-1");
    }
}
