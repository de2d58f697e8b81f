//! `tenantmeter budget set|get|list|delete`: alerting's budgets
//! (`AlertingAdminService/SetBudget`, `DeleteBudget`; `AlertingService/GetBudget`,
//! `ListBudgets`).

use serde::Serialize;
use tenantmeter_proto::v1 as pb;

use super::render::{self, Table};
use super::{Context, OpsError, call_failed};
use crate::cli::{
    BasisArg, BudgetCommand, BudgetDeleteArgs, BudgetSetArgs, PeriodArg, SubjectArgs,
};

/// Most budgets asked for per `ListBudgets` page.
const PAGE_SIZE: i32 = 1_000;

/// Runs one `budget` subcommand.
pub(super) async fn run(context: &Context<'_>, command: &BudgetCommand) -> Result<(), OpsError> {
    match command {
        BudgetCommand::Set(args) => set(context, args).await,
        BudgetCommand::Get(subject) => get(context, subject).await,
        BudgetCommand::List => list(context).await,
        BudgetCommand::Delete(args) => delete(context, args).await,
    }
}

async fn set(context: &Context<'_>, args: &BudgetSetArgs) -> Result<(), OpsError> {
    // Checked before anything is sent: the flag's value, named.
    let amount = render::parse_usd(&args.amount_usd)
        .map_err(|reason| OpsError::Usage(format!("--amount-usd: {reason}")))?;
    let budget = pb::Budget {
        subject: Some(subject(&args.subject)),
        period: period(args.period).into(),
        basis: match args.basis {
            BasisArg::Charge => pb::CostBasis::TenantCharge,
            BasisArg::Cost => pb::CostBasis::ProviderCost,
        }
        .into(),
        amount_nanos_usd: amount,
        enforcement: if args.hard {
            pb::BudgetEnforcement::Hard
        } else {
            pb::BudgetEnforcement::Soft
        }
        .into(),
        updated_at: None,
    };
    let mut admin = context.admin().await?;
    let request = admin.request(pb::SetBudgetRequest {
        budget: Some(budget),
    });
    let stored = admin
        .client
        .set_budget(request)
        .await
        .map_err(|status| call_failed("SetBudget", &status))?
        .into_inner()
        .budget
        .unwrap_or_default();
    let text = table(std::slice::from_ref(&stored));
    context.print(
        &text,
        &SetView {
            budget: BudgetView::from(&stored),
        },
    )
}

async fn get(context: &Context<'_>, args: &SubjectArgs) -> Result<(), OpsError> {
    let subject = subject(args);
    let budgets = context
        .alerting()
        .await?
        .get_budget(pb::GetBudgetRequest {
            subject: Some(subject.clone()),
        })
        .await
        .map_err(|status| call_failed("GetBudget", &status))?
        .into_inner()
        .budgets;
    let text = if budgets.is_empty() {
        match subject.subject {
            Some(pb::tenant_or_fleet::Subject::TenantId(id)) => format!(
                "no budgets set for tenant {id} (its plan's period budget applies, if it has one)\n"
            ),
            Some(pb::tenant_or_fleet::Subject::Fleet(_)) | None => {
                "no budgets set for the fleet\n".to_owned()
            }
        }
    } else {
        table(&budgets)
    };
    context.print(&text, &ListView::new(&budgets))
}

async fn list(context: &Context<'_>) -> Result<(), OpsError> {
    let mut client = context.alerting().await?;
    let mut budgets = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_budgets(pb::ListBudgetsRequest {
                page_size: PAGE_SIZE,
                page_token: page_token.clone(),
            })
            .await
            .map_err(|status| call_failed("ListBudgets", &status))?
            .into_inner();
        budgets.extend(page.budgets);
        if page.next_page_token.is_empty() || page.next_page_token == page_token {
            break;
        }
        page_token = page.next_page_token;
    }
    let text = if budgets.is_empty() {
        "no budgets set\n".to_owned()
    } else {
        table(&budgets)
    };
    context.print(&text, &ListView::new(&budgets))
}

async fn delete(context: &Context<'_>, args: &BudgetDeleteArgs) -> Result<(), OpsError> {
    let subject = subject(&args.subject);
    let mut admin = context.admin().await?;
    let request = admin.request(pb::DeleteBudgetRequest {
        subject: Some(subject.clone()),
        period: period(args.period).into(),
    });
    let deleted = admin
        .client
        .delete_budget(request)
        .await
        .map_err(|status| call_failed("DeleteBudget", &status))?
        .into_inner()
        .deleted;
    let whose = match &subject.subject {
        Some(pb::tenant_or_fleet::Subject::TenantId(id)) => format!("tenant {id}"),
        Some(pb::tenant_or_fleet::Subject::Fleet(_)) | None => "the fleet".to_owned(),
    };
    let which = render::period(period(args.period).into());
    let text = if deleted {
        format!("deleted the {which} budget of {whose}\n")
    } else {
        format!("{whose} had no {which} budget: nothing deleted\n")
    };
    context.print(&text, &DeleteView { deleted })
}

fn subject(args: &SubjectArgs) -> pb::TenantOrFleet {
    // clap's group makes exactly one of them given.
    let subject = match &args.tenant {
        Some(id) => pb::tenant_or_fleet::Subject::TenantId(id.clone()),
        None => pb::tenant_or_fleet::Subject::Fleet(true),
    };
    pb::TenantOrFleet {
        subject: Some(subject),
    }
}

fn period(period: PeriodArg) -> pb::CalendarPeriod {
    match period {
        PeriodArg::Month => pb::CalendarPeriod::Month,
        PeriodArg::Day => pb::CalendarPeriod::Day,
    }
}

/// Budgets as a table, in the order given.
fn table(budgets: &[pb::Budget]) -> String {
    let mut table = Table::new(&[
        "SUBJECT",
        "PERIOD",
        "AMOUNT",
        "BASIS",
        "ENFORCEMENT",
        "UPDATED",
    ])
    .right(&[2]);
    for budget in budgets {
        table.row(vec![
            render::subject(budget.subject.as_ref()),
            render::period(budget.period).to_owned(),
            render::usd(budget.amount_nanos_usd),
            render::basis(budget.basis).to_owned(),
            render::enforcement(budget.enforcement).to_owned(),
            render::time_or_dash(budget.updated_at.as_ref()),
        ]);
    }
    table.render()
}

/// `TenantOrFleet` in JSON: `{"tenantId": "acme"}` or `{"fleet": true}`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct SubjectView {
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fleet: Option<bool>,
}

impl SubjectView {
    pub(super) fn new(subject: Option<&pb::TenantOrFleet>) -> Self {
        match subject.and_then(|s| s.subject.as_ref()) {
            Some(pb::tenant_or_fleet::Subject::TenantId(id)) => Self {
                tenant_id: Some(id.clone()),
                fleet: None,
            },
            Some(pb::tenant_or_fleet::Subject::Fleet(fleet)) => Self {
                tenant_id: None,
                fleet: Some(*fleet),
            },
            None => Self {
                tenant_id: None,
                fleet: None,
            },
        }
    }
}

/// A budget in JSON: the proto's fields, plus `amountUsd` for people.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct BudgetView {
    subject: SubjectView,
    period: &'static str,
    basis: &'static str,
    /// int64: a string, as proto3 JSON writes it.
    amount_nanos_usd: String,
    /// The same amount as an exact USD decimal.
    amount_usd: String,
    enforcement: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    updated_at: Option<String>,
}

impl From<&pb::Budget> for BudgetView {
    fn from(budget: &pb::Budget) -> Self {
        Self {
            subject: SubjectView::new(budget.subject.as_ref()),
            period: render::period_name(budget.period),
            basis: render::basis_name(budget.basis),
            amount_nanos_usd: budget.amount_nanos_usd.to_string(),
            amount_usd: render::usd_plain(budget.amount_nanos_usd),
            enforcement: render::enforcement_name(budget.enforcement),
            updated_at: render::time(budget.updated_at.as_ref()),
        }
    }
}

/// `budget set` in JSON.
#[derive(Debug, Serialize)]
struct SetView {
    budget: BudgetView,
}

/// `budget get` and `budget list` in JSON.
#[derive(Debug, Serialize)]
struct ListView {
    budgets: Vec<BudgetView>,
}

impl ListView {
    fn new(budgets: &[pb::Budget]) -> Self {
        Self {
            budgets: budgets.iter().map(BudgetView::from).collect(),
        }
    }
}

/// `budget delete` in JSON.
#[derive(Debug, Serialize)]
struct DeleteView {
    deleted: bool,
}
