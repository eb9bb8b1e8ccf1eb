"""An input klab makes, or a random kernel, is kept with its dimensions as the numbers they are (`edge:06x8` as
`edge:6x8`), and `image:PATH:gray`, the same input as `image:PATH`, as that (service.jobs.choices.input_text and
made_text). They were kept as typed: a sweep trained `edge:6x8,edge:06x8` twice over, and `klab compare --group-by
input` made two groups of one input. The texts of jobs (the column and the spec's key) and of sweeps' params are
written so (a sweep's list keeps a value given twice once); a downgrade leaves them, which every revision reads
alike.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 20:40:00
"""
import json
import re

import sqlalchemy as sa
from alembic import op


revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


# service.jobs.choices' made_text and input_text as they were at this revision.
MADE = ("edge", "ones", "random", "checker", "diagonal")
DIMS = re.compile(r"^[0-9]{1,300}(x[0-9]{1,300}){1,3}$")


def made_text(text: str, kernel: bool = False) -> str:
    kind, _, dims = text.partition(":")
    if kind not in (("random",) if kernel else MADE) or not DIMS.match(dims):
        return text
    numbers = [int(d) for d in dims.split("x")]
    counts = (2, 4) if kernel else (2, 3, 4) if kind == "random" else (2,)
    if len(numbers) not in counts or 0 in numbers:
        return text
    return f"{kind}:{'x'.join(map(str, numbers))}"


def input_text(text: str) -> str:
    if text.startswith("image:") and text.endswith(":gray"):
        path = text[len("image:"):-len(":gray")]
        return text if path.endswith((":rgb", ":gray")) else f"image:{path}"
    return made_text(text)


KEPT = {"input": input_text, "kernel": lambda text: made_text(text, kernel=True)}
WHERE = {"input": "input LIKE '%:%'", "kernel": "kernel LIKE 'random:%'"}


def upgrade() -> None:
    bind = op.get_bind()
    postgresql = bind.dialect.name == "postgresql"
    for column, kept in KEPT.items():
        olds = bind.execute(sa.text(f"SELECT DISTINCT {column} FROM jobs WHERE {WHERE[column]}")  # noqa: S608
                            ).scalars().all()
        texts = [(old, new) for old in olds if (new := kept(old)) != old]
        if not texts:
            continue
        # a job's spec, as json.dumps wrote it, holds `"input": ` and the text as json.dumps writes it
        op.execute("CREATE TEMPORARY TABLE klab_made_texts (old text, new text, old_key text, new_key text)")
        bind.execute(sa.text("INSERT INTO klab_made_texts VALUES (:old, :new, :old_key, :new_key)"),
                     [{"old": o, "new": n, "old_key": f'"{column}": {json.dumps(o)}',
                       "new_key": f'"{column}": {json.dumps(n)}'} for o, n in texts])
        spec = "CAST(replace(CAST(spec AS text), t.old_key, t.new_key) AS json)" if postgresql else \
            "replace(spec, t.old_key, t.new_key)"
        op.execute(f"UPDATE jobs SET {column} = t.new, spec = {spec} FROM klab_made_texts t "  # noqa: S608
                   f"WHERE jobs.{column} = t.old")
        key = f"spec->>'{column}'" if postgresql else f"json_extract(spec, '$.{column}')"
        written_otherwise = bind.execute(sa.text(  # a spec written otherwise: parsed
            f"SELECT id, CAST(spec AS text) FROM jobs WHERE {column} IN (SELECT new FROM klab_made_texts) "  # noqa: S608
            f"AND {key} <> {column}")).all()
        op.execute("DROP TABLE klab_made_texts")
        for job_id, spec_text in written_otherwise:
            values = json.loads(spec_text)
            values[column] = kept(values[column])
            bind.execute(sa.text("UPDATE jobs SET spec = :spec WHERE id = :id"),
                         {"spec": json.dumps(values), "id": job_id})
    for sweep_id, params_text in bind.execute(sa.text(
            "SELECT id, CAST(params AS text) FROM sweeps WHERE CAST(params AS text) LIKE '%\"input\"%' "
            "OR CAST(params AS text) LIKE '%\"kernel\"%'")).all():
        params = json.loads(params_text)
        swept, fixed = params.get("swept") or {}, params.get("fixed") or {}
        for column, kept in KEPT.items():
            if isinstance(swept.get(column), list):  # a value given twice (edge:6x8,edge:06x8) listed once, as a
                # sweep now refuses it: the list was shown `edge:6x8,edge:6x8`
                texts = [kept(v) if isinstance(v, str) else v for v in swept[column]]
                swept[column] = [v for i, v in enumerate(texts) if not isinstance(v, str) or v not in texts[:i]]
            if isinstance(fixed.get(column), str):
                fixed[column] = kept(fixed[column])
        if json.dumps(params) != json.dumps(json.loads(params_text)):
            bind.execute(sa.text("UPDATE sweeps SET params = :params WHERE id = :id"),
                         {"params": json.dumps(params), "id": sweep_id})


def downgrade() -> None:
    pass  # the texts written are ones every revision reads, as it reads them typed so
