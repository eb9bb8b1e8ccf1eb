"""A kernel literal is kept as the numbers it trains with: each as its shortest float64 text (a whole one without
.0), `, ` between items (service.jobs.choices.kernel_text). It was kept as typed on the command line and as
json.dumps wrote a file's, so `[[1, 0.5e-1]]` typed and `kernel: [[1.0, 0.05]]` from a file were two kernels to
`klab list --kernel` and `klab compare --group-by kernel`. The literals of jobs (the column and the spec's key)
and of sweeps' params are written so; a downgrade leaves them, which every revision reads alike.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 17:40:00
"""
import json
from typing import Any

import sqlalchemy as sa
from alembic import op


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


# service.jobs.choices.kernel_text as it was at this revision.
def kernel_text(kernel: str) -> str:
    if not kernel.lstrip().startswith("["):
        return kernel
    try:
        return json.dumps(_numbers(json.loads(kernel)), allow_nan=False)
    except (ValueError, RecursionError, OverflowError):
        return kernel


def _numbers(value: Any) -> Any:
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    f = float(value)
    return int(f) if f.is_integer() and abs(f) < 1e16 else f


def upgrade() -> None:
    bind = op.get_bind()
    postgresql = bind.dialect.name == "postgresql"
    olds = bind.execute(sa.text("SELECT DISTINCT kernel FROM jobs WHERE kernel LIKE '[%'")).scalars().all()
    texts = [(old, new) for old in olds if (new := kernel_text(old)) != old]
    if texts:  # a job's spec, as json.dumps wrote it, holds `"kernel": ` and the text as json.dumps writes it
        op.execute("CREATE TEMPORARY TABLE klab_kernel_texts (old text, new text, old_key text, new_key text)")  # no
        # index: PostgreSQL's btree takes no entry past 2704 bytes, and a 32x32 literal is 7,662 characters
        bind.execute(sa.text("INSERT INTO klab_kernel_texts VALUES (:old, :new, :old_key, :new_key)"),
                     [{"old": o, "new": n, "old_key": f'"kernel": {json.dumps(o)}',
                       "new_key": f'"kernel": {json.dumps(n)}'} for o, n in texts])
        spec = "CAST(replace(CAST(spec AS text), t.old_key, t.new_key) AS json)" if postgresql else \
            "replace(spec, t.old_key, t.new_key)"
        op.execute(f"UPDATE jobs SET kernel = t.new, spec = {spec} FROM klab_kernel_texts t "  # noqa: S608
                   "WHERE jobs.kernel = t.old")
        op.execute("DROP TABLE klab_kernel_texts")
        key = "spec->>'kernel'" if postgresql else "json_extract(spec, '$.kernel')"
        for job_id, spec_text in bind.execute(sa.text(  # a spec written otherwise: parsed
                f"SELECT id, CAST(spec AS text) FROM jobs WHERE kernel LIKE '[%' AND {key} <> kernel")):  # noqa: S608
            values = json.loads(spec_text)
            values["kernel"] = kernel_text(values["kernel"])
            bind.execute(sa.text("UPDATE jobs SET spec = :spec WHERE id = :id"),
                         {"spec": json.dumps(values), "id": job_id})
    for sweep_id, params_text in bind.execute(sa.text(
            "SELECT id, CAST(params AS text) FROM sweeps WHERE CAST(params AS text) LIKE '%\"kernel\"%'")).all():
        params = json.loads(params_text)
        swept, fixed = params.get("swept") or {}, params.get("fixed") or {}
        if isinstance(swept.get("kernel"), list):
            swept["kernel"] = [kernel_text(k) if isinstance(k, str) else k for k in swept["kernel"]]
        if isinstance(fixed.get("kernel"), str):
            fixed["kernel"] = kernel_text(fixed["kernel"])
        if json.dumps(params) != json.dumps(json.loads(params_text)):
            bind.execute(sa.text("UPDATE sweeps SET params = :params WHERE id = :id"),
                         {"params": json.dumps(params), "id": sweep_id})


def downgrade() -> None:
    pass  # the texts written are literals every revision reads, as it reads those a file gave
