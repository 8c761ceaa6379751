"""deploy.sh reads HAProxy's stats as CSV: a failing check's reason, which the app controls, is
quoted into `last_chk` (before `addr`) and may hold commas and quotes. Run with the system's
awk (mawk on Debian), on the program as deploy.sh has it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

SCRIPT = (Path(__file__).parents[2] / "deploy" / "deploy.sh").read_text()
CSV_AWK = re.search(r"^csv_awk='(.*?)^}'$", SCRIPT, re.S | re.M)
ROWS = re.search(r'''awk "\$csv_awk"'(.*?)'\n}''', SCRIPT, re.S)
HEADER = "# pxname,svname,qcur,scur,status,last_chk,addr,req_tot,hrsp_5xx,econ,eresp,chkdown,"


def stat_rows(csv: str) -> list[str]:
    assert CSV_AWK and ROWS, "deploy.sh's CSV reader moved: update this test"
    program = CSV_AWK[1] + "}" + ROWS[1]
    return subprocess.run(["awk", program], input=csv, capture_output=True, text=True,
                          check=True).stdout.splitlines()


@pytest.mark.parametrize("reason", [
    "Layer7 wrong status",
    '"HTTP status check returned code <503> (bad, really)"',
    '"say ""hi"", then, fail"',
    '","',
])
def test_a_check_reason_with_commas_and_quotes_shifts_no_column(reason: str) -> None:
    csv = (f"{HEADER}\n"
           "app,FRONTEND,,,OPEN,,,900,0,0,0,,\n"
           f"app,app1,0,2,DOWN,{reason},10.0.0.5:8000,120,7,1,2,3,\n"
           "app,app2,0,0,UP 1/2,,10.0.0.6:8000,80,0,0,0,0,\n"
           "app,app3,0,0,MAINT,,,0,0,0,0,0,\n"
           "app,BACKEND,,,UP,,,200,7,1,2,,\n")
    assert stat_rows(csv) == ["app 10.0.0.5:8000 120 10 3 DOWN", "app 10.0.0.6:8000 80 0 0 UP 1/2",
                              "app - 0 0 0 MAINT"]
