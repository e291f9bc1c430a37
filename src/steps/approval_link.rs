//! The approval link: the page behind the link of an approval request message, served by a
//! Lambda function URL (`ApprovalLinks=true`).
//!
//! The link carries the request's id and a single-use token (32 random bytes; the case table
//! keeps only its SHA-256), never a Step Functions task token. Opening it (GET) only shows the
//! request and a form, since mail scanners open links; a decision is a POST of that form, with
//! the token, recorded as the command line's are: only on a pending request within its deadline,
//! and only with the token the message carried, so that a forged, replayed, expired or
//! misdirected link changes nothing and says why.

use base64::Engine as _;
use serde_json::{Value, json};

use crate::approval::{self, ApprovalRecord, Decided};
use crate::aws::context::Ctx;
use crate::error::Error;

/// The most bytes of a request body read (a form of three short fields and a reason).
const MAX_BODY_BYTES: usize = 8 * 1024;

/// The headers of every page: no caching, no referrer (the URL holds the token), no framing, no
/// script, forms posting back here only.
fn headers() -> Value {
    json!({
        "content-type": "text/html; charset=utf-8",
        "cache-control": "no-store",
        "referrer-policy": "no-referrer",
        "x-frame-options": "DENY",
        "x-content-type-options": "nosniff",
        "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    })
}

fn page(status: u16, title: &str, body_html: &str) -> Value {
    let title = html_escape::encode_text(title);
    json!({
        "statusCode": status,
        "headers": headers(),
        "body": format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"robots\" content=\"noindex\"><title>{title}</title></head><body style=\"font-family:sans-serif;max-width:48rem;margin:2rem auto\"><h1>{title}</h1>{body_html}</body></html>"
        ),
    })
}

fn text_page(status: u16, title: &str, text: &str) -> Value {
    page(
        status,
        title,
        &format!("<p>{}</p>", html_escape::encode_text(text)),
    )
}

/// The fields of a query string or a form body (`application/x-www-form-urlencoded`).
fn fields(encoded: &str) -> std::collections::HashMap<String, String> {
    form_urlencoded::parse(encoded.as_bytes())
        .into_owned()
        .collect()
}

/// The request's id and token from `fields`, when both have the shapes this tool makes.
fn credentials(fields: &std::collections::HashMap<String, String>) -> Option<(String, String)> {
    let id = fields.get("a")?;
    let token = fields.get("t")?;
    (approval::is_approval_id(id) && approval::is_link_token(token))
        .then(|| (id.clone(), token.clone()))
}

/// Who decided through the link: the address and browser the function URL saw (the link is a
/// bearer credential; CloudTrail does not record function URL callers).
fn author(event: &Value) -> String {
    let http = &event["requestContext"]["http"];
    approval::clean_text(&format!(
        "the approval link (from {}, {})",
        http["sourceIp"].as_str().unwrap_or("an unknown address"),
        http["userAgent"].as_str().unwrap_or("an unknown browser")
    ))
}

/// Answers one function URL request (payload format 2.0) with a page.
#[tracing::instrument(skip_all)]
pub async fn handle(ctx: &Ctx, event: Value) -> Result<Value, Error> {
    let ctx = &ctx.acting_as("approval-link");
    let method = event["requestContext"]["http"]["method"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    match method.as_str() {
        "GET" => {
            let query = fields(event["rawQueryString"].as_str().unwrap_or_default());
            show(ctx, &query).await
        }
        "POST" => {
            let raw = event["body"].as_str().unwrap_or_default();
            let body = if event["isBase64Encoded"].as_bool().unwrap_or(false) {
                base64::engine::general_purpose::STANDARD
                    .decode(raw)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .unwrap_or_default()
            } else {
                raw.to_owned()
            };
            if body.len() > MAX_BODY_BYTES {
                return Ok(text_page(
                    413,
                    "Too large",
                    "The form is larger than an answer can be.",
                ));
            }
            decide(ctx, &fields(&body), &author(&event)).await
        }
        _ => Ok(text_page(
            405,
            "Not allowed",
            "Open the link from the request message.",
        )),
    }
}

/// The record behind a link, when the link is one (the same answer for an unknown request and
/// a wrong token).
async fn record_of(
    ctx: &Ctx,
    fields: &std::collections::HashMap<String, String>,
) -> Result<Option<(ApprovalRecord, String)>, Error> {
    let Some((id, token)) = credentials(fields) else {
        return Ok(None);
    };
    let record = ctx.cases().approval(&id).await?;
    Ok(record
        .filter(|r| r.link_hash.as_deref() == Some(approval::link_hash(&token).as_str()))
        .map(|r| (r, token)))
}

fn invalid() -> Value {
    text_page(403, "Not a valid link", approval::INVALID_LINK)
}

async fn show(
    ctx: &Ctx,
    query: &std::collections::HashMap<String, String>,
) -> Result<Value, Error> {
    let Some((record, token)) = record_of(ctx, query).await? else {
        return Ok(invalid());
    };
    if let Some(outcome) = &record.outcome {
        return Ok(text_page(200, "Already decided", &outcome.line()));
    }
    let now = aws_smithy_types::DateTime::from(std::time::SystemTime::now()).secs();
    if now >= record.expires_at {
        return Ok(text_page(
            410,
            "Expired",
            "The request's deadline has passed: the workflow takes its default.",
        ));
    }
    let (_, message) = super::approval::request_message(&record, ctx.settings());
    let esc = |s: &str| html_escape::encode_double_quoted_attribute(s).into_owned();
    let form = |decision: &str, label: &str| {
        format!(
            "<form method=\"post\"><input type=\"hidden\" name=\"a\" value=\"{}\"><input type=\"hidden\" name=\"t\" value=\"{}\"><input type=\"hidden\" name=\"decision\" value=\"{decision}\"><p><label>Reason (kept with the decision): <input name=\"reason\" size=\"60\" maxlength=\"300\"></label></p><p><label>Type <b>{decision}</b> to confirm: <input name=\"confirm\" size=\"10\" autocomplete=\"off\" required></label></p><p><button type=\"submit\">{label}</button></p></form>",
            esc(&record.approval_id),
            esc(&token),
        )
    };
    Ok(page(
        200,
        &format!("Approval request {}", record.approval_id),
        &format!(
            "<pre style=\"white-space:pre-wrap\">{}</pre>{}{}",
            html_escape::encode_text(&message),
            form("approve", "Approve: contain the instances"),
            form("reject", "Reject: contain nothing"),
        ),
    ))
}

async fn decide(
    ctx: &Ctx,
    form: &std::collections::HashMap<String, String>,
    by: &str,
) -> Result<Value, Error> {
    let approve = match form.get("decision").map(String::as_str) {
        Some("approve") => true,
        Some("reject") => false,
        _ => return Ok(text_page(400, "No decision", "The form names no decision.")),
    };
    let Some((id, token)) = credentials(form) else {
        return Ok(invalid());
    };
    // Typed, not only clicked: a mail scanner that submits forms decides nothing.
    let word = if approve { "approve" } else { "reject" };
    if form
        .get("confirm")
        .map(|c| c.trim().to_ascii_lowercase())
        .as_deref()
        != Some(word)
    {
        return Ok(text_page(
            400,
            "Not confirmed",
            &format!("Type {word} in the confirmation field: nothing was recorded."),
        ));
    }
    let reason = form.get("reason").map(String::as_str).unwrap_or_default();
    match ctx
        .cases()
        .decide_approval_by_link(&id, &token, approve, by, reason)
        .await?
    {
        Decided::Refused(why) if why == approval::INVALID_LINK => Ok(invalid()),
        Decided::Refused(why) => Ok(text_page(409, "Nothing changed", &why)),
        Decided::Recorded(record) => {
            let Some(outcome) = record.outcome.clone() else {
                return Ok(text_page(
                    500,
                    "Not recorded",
                    "The decision was not recorded.",
                ));
            };
            let delivered = super::approval::deliver(ctx, &record.task_token, &outcome).await;
            tracing::info!(approval_id = %id, delivered = delivered.is_ok(), "decision recorded through the link");
            let follow = match delivered {
                Ok(()) => "The workflow goes on.".to_owned(),
                Err(err) => format!(
                    "The waiting execution did not take it ({err}): when its wait ends, it reads this decision."
                ),
            };
            Ok(text_page(
                200,
                "Recorded",
                &format!("{} {follow}", outcome.line()),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_ids_and_tokens_are_looked_up() {
        let token = "ab".repeat(32);
        let good = fields(&format!("a=apr-0123456789abcdef&t={token}"));
        assert_eq!(
            credentials(&good),
            Some(("apr-0123456789abcdef".to_owned(), token.clone()))
        );
        for bad in [
            format!("a=apr-0123456789abcdef&t={}", &token[1..]),
            format!("a=apr-0123456789ABCDEF&t={token}"),
            format!("a=case%23i-0&t={token}"),
            "a=apr-0123456789abcdef".to_owned(),
            String::new(),
        ] {
            assert_eq!(credentials(&fields(&bad)), None, "{bad}");
        }
    }

    #[test]
    fn pages_escape_what_they_show_and_forbid_caching_framing_and_referrers() {
        let p = text_page(409, "Nothing <changed>", "<script>alert(1)</script>");
        let body = p["body"].as_str().unwrap();
        assert!(
            !body.contains("<script>") && body.contains("&lt;script&gt;"),
            "{body}"
        );
        assert!(body.contains("Nothing &lt;changed&gt;"));
        assert_eq!(p["statusCode"], 409);
        assert_eq!(p["headers"]["cache-control"], "no-store");
        assert_eq!(p["headers"]["referrer-policy"], "no-referrer");
        assert!(
            p["headers"]["content-security-policy"]
                .as_str()
                .unwrap()
                .contains("frame-ancestors 'none'")
        );
    }

    #[test]
    fn the_author_is_what_the_function_url_saw_on_one_line() {
        let event = json!({"requestContext": {"http": {"sourceIp": "203.0.113.7", "userAgent": "Mozilla/5.0\n(evil)"}}});
        assert_eq!(
            author(&event),
            "the approval link (from 203.0.113.7, Mozilla/5.0 (evil))"
        );
    }
}
