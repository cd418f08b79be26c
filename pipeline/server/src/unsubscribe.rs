//! The unsubscribe link in every message: `GET /u/{token}` shows a
//! confirmation page (a link scanner following it changes nothing);
//! `POST /u/{token}` (the form, or a mail client's one-click
//! `List-Unsubscribe-Post`, RFC 8058) records the opt-out as an event
//! through ingest, so consent changes like any other: the rules state
//! folds it, the policy stage honours it at once, and waiting messages on
//! that channel are cancelled. The token is signed (see
//! `kairos_messaging::delivery::unsubscribe_token`); a stable message id makes
//! a second click change nothing.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Html;
use axum::routing::get;

use kairos_ingest::IngestState;
use kairos_messaging::delivery::verify_unsubscribe_token;
use kairos_policy::Channel;

struct Links {
    key: Vec<u8>,
    ingest: Arc<IngestState>,
}

/// The `/u/{token}` routes.
pub fn router(key: Vec<u8>, ingest: Arc<IngestState>) -> Router {
    Router::new()
        .route("/u/{token}", get(confirm).post(unsubscribe))
        .with_state(Arc::new(Links { key, ingest }))
}

fn page(status: StatusCode, title: &str, body: &str) -> (StatusCode, Html<String>) {
    (
        status,
        Html(format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{title}</title></head><body style=\"font-family:sans-serif;max-width:32em;margin:3em auto\"><h1>{title}</h1>{body}</body></html>"
        )),
    )
}

fn what(channel: Channel) -> &'static str {
    match channel {
        Channel::Email => "emails",
        Channel::Sms => "text messages",
        Channel::Whatsapp => "WhatsApp messages",
        Channel::Push => "push notifications",
        Channel::Webhook => "messages",
    }
}

async fn confirm(
    State(l): State<Arc<Links>>,
    Path(token): Path<String>,
) -> (StatusCode, Html<String>) {
    match verify_unsubscribe_token(&l.key, &token) {
        Some((_, channel)) => page(
            StatusCode::OK,
            "Unsubscribe",
            &format!(
                "<p>Stop receiving marketing {} from us?</p><form method=\"post\"><button type=\"submit\">Unsubscribe</button></form>",
                what(channel)
            ),
        ),
        None => page(
            StatusCode::NOT_FOUND,
            "Link not valid",
            "<p>This unsubscribe link is not valid. Use the link in the latest message you received.</p>",
        ),
    }
}

async fn unsubscribe(
    State(l): State<Arc<Links>>,
    Path(token): Path<String>,
) -> (StatusCode, Html<String>) {
    let Some((customer, channel)) = verify_unsubscribe_token(&l.key, &token) else {
        return page(
            StatusCode::NOT_FOUND,
            "Link not valid",
            "<p>This unsubscribe link is not valid. Use the link in the latest message you received.</p>",
        );
    };
    let event = kairos_messaging::callbacks::opt_out_event(channel);
    let call = serde_json::json!({
        "type": "track",
        "userId": customer,
        "event": event,
        "messageId": format!("unsubscribe-{}-{customer}", channel.as_str()),
        "properties": {"via": "unsubscribe_link"},
    });
    match l.ingest.record(&call, "kairos").await {
        Ok(()) => page(
            StatusCode::OK,
            "Unsubscribed",
            &format!(
                "<p>You will not receive marketing {} from us any more.</p>",
                what(channel)
            ),
        ),
        Err(e) => {
            tracing::error!(error = %e, "recording an unsubscribe failed");
            page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Please try again",
                "<p>We could not record your request just now. Please try the link again in a minute.</p>",
            )
        }
    }
}
