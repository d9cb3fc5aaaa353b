"""Operator commands: ``python -m premium.cli <command>`` (PYTHONPATH=plugins; the Makefile sets it).

check-postgres          fail at once, clearly, when PostgreSQL is not reachable
create-databases        create the Airflow metadata DB and the application DB if missing
migrate                 apply the application schema migrations (connection premium_db)
gen-pii-keys            print a fresh premium_pii_keys connection extra (JSON) for a new deployment
gen-customers           write a deterministic synthetic customer CSV
load-customers FILE     validate and upsert customers from a CSV (all-or-nothing on a crash)
key-status              rows per key id of every encrypted column, the keyring's current key, unknown keys (--json)
rotate                  re-encrypt every encrypted column under the keyring's current key (exit 1: rows left behind)
rotate-pii-keys         the same for customer PII and SMS outbox payloads only
rotate-balance-keys     the same for encrypted balances (daily_balance_checks) only
balance-summary         the run record of a check date, for humans (or --json)
campaign-summary        the SMS campaign record of a check date, for humans (or --json)
authorise-late-send     let an old check date's rerun send (--check-date, --by, --reason; audited)
settings-reference      print the settings tables generated from the model (--write docs/configuration.md)
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from datetime import date
from pathlib import Path


def _check_postgres(args: argparse.Namespace) -> int:
    try:
        with socket.create_connection((args.host, args.port), timeout=3):
            pass
    except OSError as exc:
        print(
            f"PostgreSQL is not reachable at {args.host}:{args.port} ({exc}). Every machine of this project runs it; "
            "start it with `pg_ctlcluster --skip-systemctl-redirect 15 main start`.",
            file=sys.stderr,
        )
        return 3
    return 0


def _create_databases(args: argparse.Namespace) -> int:
    import psycopg
    from psycopg import sql

    with psycopg.connect(host=args.host, port=args.port, user=args.user, dbname="postgres", autocommit=True) as conn:
        for name in args.names:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if exists and args.recreate:
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
                print(f"dropped database {name}")
                exists = None
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                print(f"created database {name}")
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from premium import migrations
    from premium.connections import premium_db_kwargs

    conninfo = premium_db_kwargs()
    migrations.upgrade(conninfo)
    print(f"application schema at {migrations.current(conninfo)} in database {conninfo['dbname']}")
    return 0


def _gen_pii_keys(args: argparse.Namespace) -> int:
    from premium.crypto import generate_extra

    print(json.dumps({"conn_type": "generic", "extra": generate_extra(args.key_id)}))
    return 0


def _gen_customers(args: argparse.Namespace) -> int:
    from premium.synthetic import write_csv

    path = write_csv(Path(args.out), args.count, args.seed)
    print(f"wrote {args.count} synthetic customers (seed {args.seed}) to {path}")
    return 0


def _load_customers(args: argparse.Namespace) -> int:
    from premium.crypto import KeyringCoverageError, load_keyring_for
    from premium.customers import CustomerFileError, load_customers_csv
    from premium.db import connect

    try:
        keyring = load_keyring_for()
    except KeyringCoverageError as exc:
        print(f"nothing loaded: {exc}", file=sys.stderr)
        return 2
    try:
        with connect() as conn:
            report = load_customers_csv(Path(args.file), conn, keyring)
    except (CustomerFileError, FileNotFoundError) as exc:
        print(f"nothing loaded: {exc}", file=sys.stderr)
        return 2
    for rejection in report.rejected[: args.show_rejections]:
        who = f" customer {rejection.customer_id}" if rejection.customer_id else ""
        print(f"  line {rejection.line}{who}: {rejection.reason}")
    if len(report.rejected) > args.show_rejections:
        print(f"  … and {len(report.rejected) - args.show_rejections} more rejected rows")
    print(report.summary())
    return 1 if (args.strict and report.rejected) else 0


#: The tables each rotate command covers (``rotate``: every table of premium.crypto.ENCRYPTED_TABLES).
ROTATE_COMMANDS = {
    "rotate-pii-keys": ("customers", "sms_notifications"),
    "rotate-balance-keys": ("daily_balance_checks",),
}


def _rotation_passes() -> dict:
    """One rotation pass per encrypted table (looked up when called, so tests can wrap them)."""
    from premium import crypto
    from premium.notifications import outbox

    return {
        "customers": crypto.rotate_keys,
        "sms_notifications": outbox.rotate_payload_keys,
        "daily_balance_checks": crypto.rotate_balance_keys,
    }


def _rotate(args: argparse.Namespace) -> int:
    """Rotate the command's tables until no row is left under another key; exit 1 listing what is."""
    from premium.crypto import (
        ENCRYPTED_TABLES,
        KeyringCoverageError,
        PiiDecryptError,
        PiiKeyring,
        check_keyring_covers,
        encrypted_table,
        rotate_until_done,
    )
    from premium.db import connect

    tables = ROTATE_COMMANDS.get(args.command) or tuple(t.table for t in ENCRYPTED_TABLES)
    passes = _rotation_passes()
    keyring = PiiKeyring.from_connection()
    current = keyring.current_key_id
    results = []
    with connect() as conn:
        try:
            check_keyring_covers(conn, keyring)
            for table in tables:
                result = rotate_until_done(
                    conn,
                    keyring,
                    encrypted_table(table),
                    passes[table],
                    batch_size=args.batch_size,
                    max_passes=args.max_passes,
                    lock_wait_s=args.lock_wait,
                )
                results.append(result)
                print(f"{table}: re-encrypted {result.moved} rows under key {current} ({result.passes} passes)")
        except (KeyringCoverageError, PiiDecryptError) as exc:
            print(f"rotation stopped, no key may be retired: {exc}", file=sys.stderr)
            return 2
    left = [(r.table, key_id, count) for r in results for key_id, count in r.remaining.items()]
    if left:
        print(
            f"rotation INCOMPLETE: rows are still under a key other than {current}; retire no key yet",
            file=sys.stderr,
        )
        for table, key_id, count in left:
            print(f"  {table}: {count} rows under key {key_id or '(none)'}", file=sys.stderr)
        print(
            "  (rows locked longer than --lock-wait, or written by a process that loaded the keyring before "
            "the switch: let it finish or restart it, then run this command again)",
            file=sys.stderr,
        )
        return 1
    print(f"every encrypted row of {', '.join(tables)} is under key {current}")
    return 0


def _key_status(args: argparse.Namespace) -> int:
    """Rows per key id of every encrypted column; the keyring's keys; exit 0 (a report, not a check)."""
    from premium.crypto import PiiKeyError, PiiKeyring, key_counts
    from premium.db import connect

    keyring: PiiKeyring | None = None
    keyring_error = None
    try:
        keyring = PiiKeyring.from_connection()
    except PiiKeyError as exc:
        keyring_error = str(exc)
    with connect() as conn:
        counts = key_counts(conn)
    current = keyring.current_key_id if keyring else None
    ring = sorted(keyring.keys) if keyring else []
    used = {key_id for c in counts for key_id in c.rows}
    not_current = {c.target.table: sum(n for k, n in c.rows.items() if k != current) for c in counts}
    data = {
        "current_key_id": current,
        "keyring_key_ids": ring,
        "keyring_error": keyring_error,
        "tables": [
            {
                "table": c.target.table,
                "key_column": c.target.key_column,
                "rows_by_key": c.rows,
                "columns": {column: c.cells.get(column, {}) for column in c.target.columns},
            }
            for c in counts
        ],
        "rows_not_under_current_key": not_current,
        "missing_key_ids": sorted((k for k in used if k not in ring), key=str) if keyring else [],
        "unused_key_ids": [k for k in ring if k not in used and k != current],
    }
    if args.json:
        print(json.dumps(data, default=str))
        return 0
    if keyring is None:
        print(f"PII keyring: NOT LOADED ({keyring_error})")
    else:
        print(f"PII keyring: current key {current}; holds {', '.join(ring)}")
    print(f"{'table':<22}{'column':<16}{'key id':<20}{'rows':>10}")
    for c in counts:
        for column in c.target.columns:
            cells = c.cells.get(column, {})
            if not cells:
                print(f"{c.target.table:<22}{column:<16}{'-':<20}{0:>10}")
            for key_id, n in sorted(cells.items(), key=lambda kv: str(kv[0])):
                flag = ""
                if keyring is not None:
                    flag = "current" if key_id == current else "old key" if key_id in keyring.keys else "NOT IN KEYRING"
                print(f"{c.target.table:<22}{column:<16}{key_id or '(none)':<20}{n:>10}  {flag}")
    if keyring is not None:
        behind = ", ".join(f"{t} {n}" for t, n in not_current.items() if n) or "none"
        print(f"rows under a key other than {current}: {sum(not_current.values())} ({behind})")
        if data["missing_key_ids"]:
            print(f"key ids rows use that the keyring LACKS: {', '.join(map(str, data['missing_key_ids']))}")
        print(f"keys in the ring no row uses: {', '.join(data['unused_key_ids']) or 'none'}")
    return 0


def _balance_summary(args: argparse.Namespace) -> int:
    from premium.db import connect

    with connect() as conn:
        row = conn.execute(
            """
            SELECT status, accounts_planned, accounts_checked, accounts_passing, accounts_skipped, accounts_failed,
                   chunks, mapped_tasks, correlation_id, started_at, finished_at,
                   extract(epoch FROM finished_at - started_at)
            FROM balance_check_runs WHERE check_date = %s
            """,
            (args.date,),
        ).fetchone()
        reasons = conn.execute(
            "SELECT reason, count(*) FROM balance_check_failures WHERE check_date = %s GROUP BY reason ORDER BY 1",
            (args.date,),
        ).fetchall()
    if row is None:
        print(f"no balance check run recorded for {args.date}", file=sys.stderr)
        return 1
    keys = ["status", "planned", "checked", "passing", "skipped", "failed", "chunks", "fetch_tasks", "correlation_id"]
    data = dict(zip(keys, row[:9], strict=True))
    data["duration_s"] = round(float(row[11]), 1) if row[11] is not None else None
    data["reasons"] = dict(reasons)
    if args.json:
        print(json.dumps({"check_date": args.date.isoformat(), **data}, default=str))
        return 0
    print(f"Balance checks for {args.date} — {data['status']}")
    print(f"  accounts planned   {data['planned']:>8}   ({data['chunks']} chunks, {data['fetch_tasks']} fetch tasks)")
    print(f"  checked            {data['checked'] or 0:>8}")
    print(f"    passing 15k NIS  {data['passing'] or 0:>8}")
    print(f"  skipped            {data['skipped'] or 0:>8}")
    print(f"  failed             {data['failed'] or 0:>8}")
    for reason, count in data["reasons"].items():
        print(f"    {reason:<17}{count:>8}")
    print(f"  duration           {data['duration_s']:>8} s   correlation id {data['correlation_id']}")
    return 0


def _campaign_summary(args: argparse.Namespace) -> int:
    from premium.db import connect

    with connect() as conn:
        run = conn.execute(
            "SELECT campaign_id, mode, qualified, reasons, send_after, batches, submitted, rejected, failed_over, "
            "buffered, status, detail FROM sms_campaign_runs WHERE check_date = %s",
            (args.date,),
        ).fetchone()
        if run is None:
            print(f"no campaign run recorded for {args.date}", file=sys.stderr)
            return 1
        campaign_id = run[0]
        notifications = dict(
            conn.execute(
                "SELECT status, count(*) FROM sms_notifications WHERE campaign_id = %s GROUP BY 1", (campaign_id,)
            ).fetchall()
        )
        batches = dict(
            conn.execute(
                "SELECT coalesce(carrier, 'none') || '/' || status, count(*) FROM sms_batches "
                "WHERE campaign_id = %s GROUP BY 1",
                (campaign_id,),
            ).fetchall()
        )
        delivery = conn.execute(
            """
            SELECT count(*) FILTER (WHERE status = 'DELIVERED'), count(*) FILTER (WHERE status = 'FAILED'),
                   count(*) FILTER (WHERE status = 'UNDELIVERABLE'), count(*) FILTER (WHERE attempts > 1),
                   count(*) FILTER (WHERE status = 'UNCONFIRMED'),
                   count(*) FILTER (WHERE status IN ('PENDING', 'QUEUED', 'SENT', 'NO_STATUS'))
            FROM sms_notifications WHERE campaign_id = %s
            """,
            (campaign_id,),
        ).fetchone()
        encodings = dict(
            conn.execute(
                "SELECT encoding || ' x' || segments, count(*) FROM sms_notifications WHERE campaign_id = %s GROUP BY 1",
                (campaign_id,),
            ).fetchall()
        )
    keys = ["campaign_id", "mode", "qualified", "reasons", "send_after", "batches", "submitted", "rejected"]
    keys += ["failed_over", "buffered", "status", "detail"]
    data = dict(zip(keys, run, strict=True))
    data.update(notifications=notifications, batches_by_carrier=batches, encodings=encodings)
    data["delivery"] = dict(
        zip(("delivered", "failed", "undeliverable", "retried", "unconfirmed", "in_progress"), delivery, strict=True)
    )
    if args.json:
        print(json.dumps({"check_date": args.date.isoformat(), **data}, default=str))
        return 0
    print(f"Qualification and SMS for {args.date} — {campaign_id}, mode {data['mode']}, {data['status']}")
    print(f"  qualified today    {data['qualified']:>8}")
    for reason, count in sorted((data["reasons"] or {}).items(), key=lambda kv: -kv[1]):
        print(f"    not: {reason:<15}{count:>6}")
    send_after = data["send_after"]
    if send_after is not None:
        from zoneinfo import ZoneInfo

        send_after = send_after.astimezone(ZoneInfo("Asia/Jerusalem")).strftime("%Y-%m-%d %H:%M %Z")
    print(f"  send window        {send_after}")
    print(f"  batches            {data['batches'] or 0:>8}   {batches}")
    print(f"  submitted          {data['submitted'] or 0:>8}   rejected {data['rejected'] or 0}")
    print(f"  failed over        {data['failed_over'] or 0:>8}   buffered {data['buffered'] or 0}")
    print(f"  campaign so far    {sum(notifications.values()):>8}   {notifications}")
    print(f"  encodings          {encodings}")
    d = data["delivery"]
    print(
        f"  delivery           delivered {d['delivered']}, failed {d['failed']}, undeliverable {d['undeliverable']}, "
        f"retried {d['retried']}, unconfirmed {d['unconfirmed']}, in progress {d['in_progress']}"
    )
    if data["detail"]:
        print(f"  note               {data['detail']}")
    return 0


def _authorise_late_send(args: argparse.Namespace) -> int:
    import psycopg

    from premium import late_send
    from premium.connections import premium_db_kwargs

    try:
        with psycopg.connect(**premium_db_kwargs()) as conn:
            done = late_send.authorise(conn, args.check_date, args.by, args.reason)
    except ValueError as exc:
        print(f"authorise-late-send: {exc}", file=sys.stderr)
        return 2
    print(
        f"late send of {done.check_date} authorised by {done.authorised_by} at {done.authorised_at:%Y-%m-%d %H:%M:%S%z}"
        " (audit_trail: late_send_authorised). Rerun plan_send of that date's run (clear it in the UI, downstream"
        " included): it sends in the next send window; customers already sent to in the campaign get nothing more."
    )
    return 0


def _settings_reference(args: argparse.Namespace) -> int:
    from premium import settings

    table = settings.reference_markdown()
    if not args.write:
        print(table, end="")
        return 0
    path = Path(args.write)
    page = path.read_text(encoding="utf-8")
    begin, end = "<!-- settings-reference:begin -->\n", "<!-- settings-reference:end -->"
    if begin not in page or end not in page:
        print(f"{path}: no {begin.strip()} … {end} block to replace", file=sys.stderr)
        return 1
    path.write_text(page[: page.index(begin) + len(begin)] + table + page[page.index(end) :], encoding="utf-8")
    print(f"{path}: settings reference updated")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m premium.cli", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check-postgres")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5432)
    p.set_defaults(func=_check_postgres)

    p = sub.add_parser("create-databases")
    p.add_argument("names", nargs="+")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5432)
    p.add_argument("--user", default="postgres")
    p.add_argument("--recreate", action="store_true", help="drop and create (the demo's own database only)")
    p.set_defaults(func=_create_databases)

    sub.add_parser("migrate").set_defaults(func=_migrate)

    p = sub.add_parser("gen-pii-keys")
    p.add_argument("--key-id", default=f"k{date.today():%Y%m}")
    p.set_defaults(func=_gen_pii_keys)

    p = sub.add_parser("gen-customers")
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--seed", type=int, default=20251118)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_gen_customers)

    p = sub.add_parser("load-customers")
    p.add_argument("file")
    p.add_argument("--strict", action="store_true", help="exit 1 when any row is rejected")
    p.add_argument("--show-rejections", type=int, default=20)
    p.set_defaults(func=_load_customers)

    p = sub.add_parser("key-status")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_key_status)

    for command in ("rotate", *ROTATE_COMMANDS):
        p = sub.add_parser(command)
        p.add_argument("--batch-size", type=int, default=1000, help="rows per committed batch")
        p.add_argument("--max-passes", type=int, default=6, help="passes per table before giving up (exit 1)")
        p.add_argument(
            "--lock-wait", type=float, default=30.0, help="seconds to wait for rows another session holds locked"
        )
        p.set_defaults(func=_rotate)

    p = sub.add_parser("balance-summary")
    p.add_argument("--date", type=date.fromisoformat, required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_balance_summary)

    p = sub.add_parser("campaign-summary")
    p.add_argument("--date", type=date.fromisoformat, required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_campaign_summary)

    p = sub.add_parser("authorise-late-send", help="an operator's audited decision that an old date may send")
    p.add_argument("--check-date", type=date.fromisoformat, required=True)
    p.add_argument("--by", required=True, help="who authorises (name or staff id)")
    p.add_argument("--reason", required=True, help="why (ticket, incident)")
    p.set_defaults(func=_authorise_late_send)

    p = sub.add_parser("settings-reference")
    p.add_argument("--write", metavar="FILE", help="replace the generated block of FILE (docs/configuration.md)")
    p.set_defaults(func=_settings_reference)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
