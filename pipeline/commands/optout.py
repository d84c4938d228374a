"""`pipeline optout add|members import|check|list|apply`: the opt-out registry and re-releases."""

import sys
from pathlib import Path

from pipeline.errors import UserError

DEFAULT_REGISTRY = "optout.duckdb"


def _read_request(source: str) -> str:
    try:
        data = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as e:
        raise UserError(f"{source}: cannot read the request ({e.strerror})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{source}: the request is not UTF-8 text") from None


def _add(args) -> int:
    from pipeline.optout.ownership import ACCEPTED, DUPLICATE
    from pipeline.optout.registry import Registry

    result = Registry(args.registry).add(_read_request(args.request), args.requester, source=args.source)
    counts: dict[str, int] = {}
    for d in result.decisions:
        counts[d.outcome] = counts.get(d.outcome, 0) + 1
    summary = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())) or "no targets found"
    print(f"request {result.request_id} from {args.requester}: {summary}")
    for d in result.decisions:
        what = str(d.target) if d.target else repr(d.text[:60] + ("..." if len(d.text) > 60 else ""))
        print(f"  line {d.line:<5} {d.outcome:<9} {what:<40} {d.reason}")
    if result.version is not None:
        print(f"registry {args.registry}: version {result.version}")
    if not any(d.outcome in (ACCEPTED, DUPLICATE) for d in result.decisions):
        print("nothing in the request was accepted: no opt-out recorded", file=sys.stderr)
        return 1
    return 0


def _members_import(args) -> int:
    from pipeline.optout.registry import Registry

    added, read = Registry(args.registry).import_members(args.csv)
    print(f"{args.csv}: {read} memberships read, {added} new in {args.registry}")
    return 0


def _check(args) -> int:
    from pipeline.optout.check import files_per_repo
    from pipeline.optout.parser import ParseError, parse_target

    try:
        target = parse_target(args.target.strip())
    except ParseError as e:
        raise UserError(str(e)) from None
    rows = files_per_repo(target, args.dataset)
    if not rows:
        print(f"{target}: not in {args.dataset}")
        return 1
    for repo, files in rows:
        print(f"{repo}\t{files} files")
    print(f"{target}: {sum(n for _, n in rows)} files in {len(rows)} repositories of {args.dataset}")
    return 0


def _list(args) -> int:
    from pipeline.optout.registry import Registry

    registry = Registry(args.registry)
    if args.requests:
        rows = registry.query(
            "SELECT r.request_id, r.requester, r.received_at, r.version, "
            "count(*) FILTER (WHERE d.outcome = 'accepted'), count(*) FILTER (WHERE d.outcome = 'rejected'), "
            "count(*) FILTER (WHERE d.outcome = 'unparsed'), r.source FROM requests r "
            "LEFT JOIN decisions d USING (request_id) GROUP BY ALL ORDER BY r.request_id")
        print("request\trequester\treceived (UTC)\tversion\taccepted\trejected\tunparsed\tsource")
    else:
        rows = registry.query("SELECT version, CASE WHEN repo IS NULL THEN owner ELSE owner || '/' || repo END, "
                              "CASE WHEN repo IS NULL THEN 'account' ELSE 'repository' END, requester, added_at, "
                              "request_id FROM entries ORDER BY version, 2")
        print("version\topted out\tkind\trequester\tadded (UTC)\trequest")
    for row in rows:
        print("\t".join("" if v is None else str(v) for v in row))
    version = registry.snapshot().version
    print(f"registry {args.registry}: version {version}, {len(rows)} {'requests' if args.requests else 'entries'}",
          file=sys.stderr)
    return 0


def _apply(args) -> int:
    from pipeline.optout.apply import apply_optouts

    apply_optouts(args.dataset, args.output, registry=args.registry, overwrite=args.overwrite)
    return 0


def register(subparsers) -> None:
    optout = subparsers.add_parser("optout", help="opt-out requests, registry and re-releases")
    sub = optout.add_subparsers(dest="optout_command", required=True, parser_class=type(optout))

    add = sub.add_parser("add", help="record an opt-out request (the text of a GitHub issue)")
    add.add_argument("request", help="file holding the issue text, or - for stdin")
    add.add_argument("--requester", required=True, help="the GitHub account that wrote the issue")
    add.add_argument("--registry", default=DEFAULT_REGISTRY)
    add.add_argument("--source", help="where the request came from (e.g. the issue URL)")
    add.set_defaults(func=_add)

    members = sub.add_parser("members", help="organisation memberships used to verify requests")
    members_sub = members.add_subparsers(dest="members_command", required=True, parser_class=type(optout))
    imp = members_sub.add_parser("import", help="add user,org rows of a CSV file")
    imp.add_argument("csv")
    imp.add_argument("--registry", default=DEFAULT_REGISTRY)
    imp.set_defaults(func=_members_import)

    check = sub.add_parser("check", help="is an account or repository in a dataset? (exit 0 yes, 1 no)")
    check.add_argument("target", metavar="USER_OR_REPO")
    check.add_argument("--dataset", required=True)
    check.set_defaults(func=_check)

    lst = sub.add_parser("list", help="the registry's opt-outs (or requests)")
    lst.add_argument("--registry", default=DEFAULT_REGISTRY)
    lst.add_argument("--requests", action="store_true", help="list requests and their decisions instead")
    lst.set_defaults(func=_list)

    apply = sub.add_parser("apply", help="a new release of an output with the registry's opt-outs applied")
    apply.add_argument("--dataset", required=True, help="an existing output directory")
    apply.add_argument("--output", required=True, help="the new release's directory")
    apply.add_argument("--registry", help="default: the registry of the dataset's opt_out stage")
    apply.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    apply.set_defaults(func=_apply)
