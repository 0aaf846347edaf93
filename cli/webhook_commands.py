"""`edgefleet webhook add|list|remove|deliveries`: where the cloud sends every alert when it opens and when it
closes (cloud/webhooks.py). `edgefleet alerts` lists the alerts themselves."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from edgefleet.cli.app import app, out
from edgefleet.cli.fleet_commands import CloudOption, TokenOption
from edgefleet.core.api_client import CloudClient

webhook_app = typer.Typer(no_args_is_help=True, help="Webhooks every alert is POSTed to when it opens and closes "
                                                     "(signed, retried).")
app.add_typer(webhook_app, name="webhook")


@webhook_app.command("add")
def add(
    url: Annotated[str, typer.Argument(help="http(s) URL that receives each alert as a signed JSON POST")],
    secret: Annotated[str | None, typer.Option(help="HMAC-SHA256 key, 16-128 characters (default: a new "
                                                    "random one, printed once)")] = None,
    event: Annotated[list[str] | None, typer.Option(help="Only these events: alert.opened, alert.resolved "
                                                         "(repeat the option; default both)")] = None,
    kind: Annotated[list[str] | None, typer.Option(help="Only alerts of these kinds, e.g. data_drift, latency "
                                                        "(repeat the option; default every kind)")] = None,
    cloud: CloudOption = None,
    token: TokenOption = None,
) -> None:
    """Add a webhook; it receives the alerts opened from now on, and each again when it closes."""
    body = {"url": url} | ({"secret": secret} if secret is not None else {})
    body |= ({"events": event} if event else {}) | ({"kinds": kind} if kind else {})
    hook = CloudClient(cloud, token).post_json("/api/v1/webhooks", body)
    out.print(f"webhook {hook['id']}: {hook['url']}", markup=False, highlight=False, soft_wrap=True)
    out.print(f"secret: {hook['secret']}  (shown only now; check X-Edgefleet-Signature: sha256=HMAC-SHA256 of "
              f"the body with it)", markup=False, highlight=False, soft_wrap=True)


@webhook_app.command("list")
def list_hooks(cloud: CloudOption = None, token: TokenOption = None) -> None:
    """The webhooks, without their secrets."""
    table = Table("id", "url", "events", "kinds", "added", title="webhooks")
    for hook in CloudClient(cloud, token).get("/api/v1/webhooks"):
        table.add_row(str(hook["id"]), escape(hook["url"]), ", ".join(hook.get("events") or ["all"]),
                      ", ".join(hook.get("kinds") or ["all"]), _when(hook["created_at"]))
    out.print(table)


@webhook_app.command("remove")
def remove(hook_id: Annotated[int, typer.Argument(help="Webhook id")], cloud: CloudOption = None,
           token: TokenOption = None) -> None:
    """Remove a webhook and its delivery log."""
    CloudClient(cloud, token).delete(f"/api/v1/webhooks/{hook_id}")
    out.print(f"webhook {hook_id} removed", markup=False)


@webhook_app.command("deliveries")
def deliveries(hook_id: Annotated[int, typer.Argument(help="Webhook id")], cloud: CloudOption = None,
               token: TokenOption = None) -> None:
    """The delivery log of one webhook, newest first: state, attempts, the last answer."""
    table = Table("alert", "event", "state", "attempts", "last answer", "delivered", title=f"webhook {hook_id}")
    for row in CloudClient(cloud, token).get(f"/api/v1/webhooks/{hook_id}/deliveries"):
        answer = str(row["last_status"]) if row["last_status"] is not None else (row["last_error"] or "-")
        table.add_row(str(row["alert_id"]), row["event"], row["state"], str(row["attempts"]), escape(answer),
                      _when(row["delivered_at"]))
    out.print(table)


def _when(stamp: float | None) -> str:
    return datetime.fromtimestamp(stamp, timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if stamp else "-"
