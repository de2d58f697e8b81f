//! `tenantmeter alerts` (`AlertingService/ListAlerts`, newest first) and
//! `tenantmeter alerts ack` (`AlertingAdminService/Acknowledge`).

use serde::Serialize;
use tenantmeter_proto::v1 as pb;
use tenantmeter_runtime::config::EnvMap;

use super::budget::SubjectView;
use super::render::{self, Table};
use super::status::ReasonView;
use super::{Context, OpsError, call_failed};
use crate::cli::{AckArgs, AlertsArgs};

/// Most alerts asked for per `ListAlerts` page (the service's maximum).
const MAX_PAGE: usize = 1_000;

/// Runs `alerts`: the newest `--limit` alerts matching the filters.
pub(super) async fn list(context: &Context<'_>, args: &AlertsArgs) -> Result<(), OpsError> {
    let mut client = context.alerting().await?;
    let subjects = args
        .tenant
        .iter()
        .map(|id| pb::TenantOrFleet {
            subject: Some(pb::tenant_or_fleet::Subject::TenantId(id.clone())),
        })
        .collect::<Vec<_>>();
    let limit = usize::try_from(args.limit).unwrap_or(usize::MAX);
    let mut alerts = Vec::new();
    let mut page_token = String::new();
    // One more than the limit is asked for, so "more" is known, not guessed.
    let more = loop {
        let wanted = limit.saturating_add(1).saturating_sub(alerts.len());
        let page_size = i32::try_from(wanted.min(MAX_PAGE)).unwrap_or(i32::MAX);
        let page = client
            .list_alerts(pb::ListAlertsRequest {
                subjects: subjects.clone(),
                unacknowledged_only: args.unacknowledged,
                page_size,
                page_token: page_token.clone(),
                ..pb::ListAlertsRequest::default()
            })
            .await
            .map_err(|status| call_failed("ListAlerts", &status))?
            .into_inner();
        alerts.extend(page.alerts);
        if alerts.len() > limit {
            alerts.truncate(limit);
            break true;
        }
        if page.next_page_token.is_empty() || page.next_page_token == page_token {
            break false;
        }
        page_token = page.next_page_token;
    };
    let mut text = if alerts.is_empty() {
        "no alerts\n".to_owned()
    } else {
        table(&alerts)
    };
    if more {
        text.push_str(&format!("(the newest {limit} shown; more with --limit)\n"));
    }
    context.print(&text, &AlertsView::new(&alerts))
}

/// Runs `alerts ack ID...`.
pub(super) async fn ack(
    context: &Context<'_>,
    args: &AckArgs,
    env: &EnvMap,
) -> Result<(), OpsError> {
    let by = args
        .by
        .clone()
        .or_else(|| env.get("USER").cloned())
        .unwrap_or_default();
    let mut admin = context.admin().await?;
    let request = admin.request(pb::AcknowledgeRequest {
        alert_ids: args.ids.clone(),
        acknowledged_by: by,
        comment: args.comment.clone().unwrap_or_default(),
    });
    let alerts = admin
        .client
        .acknowledge(request)
        .await
        .map_err(|status| call_failed("Acknowledge", &status))?
        .into_inner()
        .alerts;
    let count = alerts.len();
    let noun = if count == 1 { "alert" } else { "alerts" };
    let text = format!("acknowledged {count} {noun}\n{}", table(&alerts));
    context.print(&text, &AlertsView::new(&alerts))
}

/// Alerts, one line each, in the order given.
fn table(alerts: &[pb::Alert]) -> String {
    let mut table = Table::new(&[
        "RAISED",
        "ID",
        "SUBJECT",
        "CHANGE",
        "ACKNOWLEDGED",
        "REASON",
    ]);
    for alert in alerts {
        let mut change = format!(
            "{} -> {}",
            render::level(alert.from_level),
            render::level(alert.to_level)
        );
        if alert.shadow {
            change.push_str(" (shadow)");
        }
        let acknowledged = if !alert.acknowledged {
            "-".to_owned()
        } else if alert.acknowledged_by.is_empty() {
            "yes".to_owned()
        } else {
            format!("by {}", alert.acknowledged_by)
        };
        table.row(vec![
            render::time_or_dash(alert.raised_at.as_ref()),
            alert.alert_id.clone(),
            render::subject(alert.subject.as_ref()),
            change,
            acknowledged,
            alert
                .reasons
                .first()
                .map_or_else(|| "-".to_owned(), |reason| reason.message.clone()),
        ]);
    }
    table.render()
}

/// An alert in JSON, without its snapshot and deliveries (grpcurl shows
/// those).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct AlertView {
    alert_id: String,
    subject: SubjectView,
    from_level: &'static str,
    to_level: &'static str,
    reasons: Vec<ReasonView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raised_at: Option<String>,
    shadow: bool,
    acknowledged: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    acknowledged_at: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    acknowledged_by: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    acknowledge_comment: String,
}

impl From<&pb::Alert> for AlertView {
    fn from(alert: &pb::Alert) -> Self {
        Self {
            alert_id: alert.alert_id.clone(),
            subject: SubjectView::new(alert.subject.as_ref()),
            from_level: render::level_name(alert.from_level),
            to_level: render::level_name(alert.to_level),
            reasons: alert.reasons.iter().map(ReasonView::from).collect(),
            raised_at: render::time(alert.raised_at.as_ref()),
            shadow: alert.shadow,
            acknowledged: alert.acknowledged,
            acknowledged_at: render::time(alert.acknowledged_at.as_ref()),
            acknowledged_by: alert.acknowledged_by.clone(),
            acknowledge_comment: alert.acknowledge_comment.clone(),
        }
    }
}

/// `alerts` and `alerts ack` in JSON.
#[derive(Debug, Serialize)]
struct AlertsView {
    alerts: Vec<AlertView>,
}

impl AlertsView {
    fn new(alerts: &[pb::Alert]) -> Self {
        Self {
            alerts: alerts.iter().map(AlertView::from).collect(),
        }
    }
}
