"""``medvideocap rate serve EVAL_DIR``: clinicians rate blind pairs in a browser, every choice kept.

Why it is shaped this way: the MedGen paper's strongest evidence is doctors' pairwise preferences, and a
static page plus a CSV to fill by hand loses work (a closed tab, a mistyped cell, two people editing one
file). The app serves the pairs of the eval's rating sheet (:func:`medvideocap.eval.ratings.write_rating_sheet`:
neutral file names, random left/right recorded in ``key.json``), one pair at a time per rater, and stores
each choice in SQLite the moment it is clicked. SQLite in WAL mode with one row per (rater, pair) is what
makes the promises hold without our own locking: a closed tab or a killed server loses nothing already
clicked, a rater who comes back resumes at their first unrated pair, two raters at once write different
rows, and a rater who changes their mind replaces their own row. ``export`` writes the sheet's CSV with
one row per (rater, pair), which ``eval --import-ratings`` reads like a hand-filled sheet.

Flask (with werkzeug's threaded server) because the app is five routes on a laptop or a lab server, not a
service; the browser is the rater's own.
"""

from __future__ import annotations

import csv
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medvideocap.atomic import atomic_path
from medvideocap.eval.ratings import CSV_FIELDS, KEY_FILE, RATINGS_DIR, SHEET_CSV, write_rating_sheet
from medvideocap.eval.runner import EvalError

DB_FILE = "ratings.sqlite"
EXPORT_FILE = "app-ratings.csv"
RATER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")
CHOICES = ("left", "right", "tie")

_PAGE = """<!doctype html><meta charset=utf-8><title>Pairwise video rating</title>
<style>body{font-family:sans-serif;max-width:1200px;margin:auto;padding:0 1em}.pair{display:flex;gap:1em}
figure{flex:1;margin:0}video{width:100%;background:#000}button{font-size:1.1em;padding:.5em 1.5em;margin:.3em}
.meta{color:#555}</style>
{% if not rater %}
<h1>Pairwise video rating</h1>
<form method=get action="{{ url_for('start') }}"><label>Your name or rater token:
<input name=rater id=rater pattern="[A-Za-z0-9][A-Za-z0-9._-]{0,39}" required></label>
<button type=submit id=start>Start</button></form>
{% elif pair %}
<h1>Which video shows the prompt better?</h1>
<p class=meta>Rater <b id=who>{{ rater }}</b> · pair <span id=position>{{ position }}</span> of {{ total }}
· {{ category }}</p>
<p id=prompt>{{ prompt }}</p>
<div class=pair>
<figure><video src="{{ url_for('video', pair=pair, side='left') }}" controls loop muted autoplay></video>
<figcaption>left</figcaption></figure>
<figure><video src="{{ url_for('video', pair=pair, side='right') }}" controls loop muted autoplay></video>
<figcaption>right</figcaption></figure></div>
<form method=post action="{{ url_for('choose', rater=rater) }}">
<input type=hidden name=pair value="{{ pair }}">
<p>Judge medical accuracy first (anatomy, instruments, steps), then visual quality.</p>
<button name=choice value=left id=left>Left is better</button>
<button name=choice value=tie id=tie>Tie</button>
<button name=choice value=right id=right>Right is better</button>
<p><label>Notes (optional) <input name=notes size=60></label></p></form>
{% else %}
<h1 id=done>All {{ total }} pairs rated. Thank you, {{ rater }}.</h1>
<p>You can close this tab; your choices are saved.</p>
{% endif %}
"""


class RatingStore:
    """The ratings of one eval folder: its sheet's pairs (read once) and the SQLite file of choices.

    Owns: ``ratings/ratings.sqlite``. Every call opens its own connection, so the store is safe to use
    from the server's request threads and from several processes."""

    def __init__(self, eval_dir: str | Path, *, seed: int = 0) -> None:
        self.folder = Path(eval_dir) / RATINGS_DIR
        if not (self.folder / KEY_FILE).is_file() or not (self.folder / SHEET_CSV).is_file():
            write_rating_sheet(Path(eval_dir), seed=seed)
        with (self.folder / SHEET_CSV).open(newline="", encoding="utf-8") as fh:
            self.pairs: list[dict[str, str]] = list(csv.DictReader(fh))
        self.by_id = {p["pair"]: p for p in self.pairs}
        self.db = self.folder / DB_FILE
        with self._connect() as con:
            con.execute(
                "CREATE TABLE IF NOT EXISTS choices (rater TEXT NOT NULL, pair TEXT NOT NULL, "
                "choice TEXT NOT NULL, notes TEXT NOT NULL DEFAULT '', at REAL NOT NULL, "
                "PRIMARY KEY (rater, pair))"
            )

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.db, timeout=30.0)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")  # a choice the rater saw saved survives a power cut
            with con:  # one transaction, committed on success
                yield con
        finally:
            con.close()

    def record(self, rater: str, pair: str, choice: str, notes: str = "") -> None:
        """Store ``rater``'s ``choice`` for ``pair`` (replacing their earlier choice for it, if any)."""
        if not RATER.match(rater):
            raise EvalError(f"rater {rater!r}: use 1-40 letters, digits, '.', '_' or '-'")
        if pair not in self.by_id:
            raise EvalError(f"pair {pair!r} is not in {self.folder / KEY_FILE}")
        if choice not in CHOICES:
            raise EvalError(f"choice {choice!r}: one of {', '.join(CHOICES)}")
        with self._connect() as con:
            con.execute(
                "INSERT INTO choices (rater, pair, choice, notes, at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (rater, pair) DO UPDATE SET choice = excluded.choice, notes = excluded.notes, "
                "at = excluded.at",
                (rater, pair, choice, notes[:2000], time.time()),
            )

    def rated(self, rater: str) -> set[str]:
        with self._connect() as con:
            return {row[0] for row in con.execute("SELECT pair FROM choices WHERE rater = ?", (rater,))}

    def next_pair(self, rater: str) -> tuple[int, dict[str, str] | None]:
        """(1-based position, pair) of the first pair in sheet order that ``rater`` has not rated."""
        done = self.rated(rater)
        for n, pair in enumerate(self.pairs, 1):
            if pair["pair"] not in done:
                return n, pair
        return len(self.pairs) + 1, None

    def rows(self) -> list[dict[str, str]]:
        """Every stored choice as a row of the sheet's CSV (what ``eval --import-ratings`` reads)."""
        with self._connect() as con:
            stored = con.execute(
                "SELECT rater, pair, choice, notes FROM choices ORDER BY pair, rater"
            ).fetchall()
        out = []
        for rater, pair, choice, notes in stored:
            sheet = self.by_id[pair]
            out.append(
                {
                    **{f: sheet.get(f, "") for f in CSV_FIELDS},
                    "choice": choice,
                    "rater": rater,
                    "notes": notes,
                }
            )
        return out

    def export(self, path: str | Path | None = None) -> Path:
        """Write :meth:`rows` as CSV (default ``ratings/app-ratings.csv``, beside ``key.json``)."""
        dest = Path(path) if path else self.folder / EXPORT_FILE
        rows = self.rows()
        if not rows:
            raise EvalError(f"{self.db}: no choices stored yet; nothing to export")
        with atomic_path(dest, fsync=True) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        return dest


def create_app(store: RatingStore) -> Any:
    """The Flask app over ``store``: ``/`` asks for a rater name, ``/r/NAME`` shows their next pair,
    ``POST /r/NAME`` stores a choice, ``/video/PAIR/SIDE`` serves the sheet's neutral copies,
    ``/export.csv`` downloads every choice."""
    from flask import Flask, abort, redirect, render_template_string, request, send_file, url_for

    app = Flask("medvideocap.rate")

    @app.get("/")
    def index() -> Any:
        return render_template_string(_PAGE, rater=None)

    @app.get("/start")
    def start() -> Any:
        rater = (request.args.get("rater") or "").strip()
        if not RATER.match(rater):
            abort(400, "rater: use 1-40 letters, digits, '.', '_' or '-'")
        return redirect(url_for("rate", rater=rater))

    @app.get("/r/<rater>")
    def rate(rater: str) -> Any:
        if not RATER.match(rater):
            abort(400, "rater: use 1-40 letters, digits, '.', '_' or '-'")
        position, pair = store.next_pair(rater)
        fields = (
            {"prompt": pair["prompt"], "category": pair["category"], "pair": pair["pair"]} if pair else {}
        )
        return render_template_string(
            _PAGE, rater=rater, position=position, total=len(store.pairs), **({"pair": None} | fields)
        )

    @app.post("/r/<rater>")
    def choose(rater: str) -> Any:
        try:
            store.record(
                rater,
                request.form.get("pair", ""),
                request.form.get("choice", ""),
                request.form.get("notes", ""),
            )
        except EvalError as exc:
            abort(400, str(exc))
        return redirect(url_for("rate", rater=rater), code=303)

    @app.get("/video/<pair>/<side>")
    def video(pair: str, side: str) -> Any:
        if pair not in store.by_id or side not in ("left", "right"):
            abort(404)
        return send_file(store.folder / store.by_id[pair][side], mimetype="video/mp4", conditional=True)

    @app.get("/export.csv")
    def export_csv() -> Any:
        try:
            return send_file(
                store.export(), mimetype="text/csv", as_attachment=True, download_name=EXPORT_FILE
            )
        except EvalError as exc:
            abort(404, str(exc))

    return app


def serve(
    eval_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8765, seed: int = 0, announce: Any = print
) -> None:
    """Serve the rating app until interrupted; ``port`` 0 picks a free one. ``announce`` gets the URL."""
    from werkzeug.serving import make_server

    store = RatingStore(eval_dir, seed=seed)
    server = make_server(host, port, create_app(store), threaded=True)
    announce(f"http://{host}:{server.server_port}/")
    try:
        server.serve_forever()
    finally:
        server.server_close()
