from monitor.cli.entry import run

raise SystemExit(run())
