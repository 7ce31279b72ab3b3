"""Turning the test server's conninfo strings into ``postgresql://`` URLs."""

from __future__ import annotations

import urllib.parse

from psycopg.conninfo import conninfo_to_dict


def url_of(dsn: str) -> str:
    """A libpq conninfo as a ``postgresql://`` URL (a socket directory goes in ``host=``)."""
    params = {k: str(v) for k, v in conninfo_to_dict(dsn).items()}
    user = urllib.parse.quote(params.pop("user", ""), safe="")
    password = params.pop("password", None)
    dbname = urllib.parse.quote(params.pop("dbname", ""), safe="")
    credentials = f"{user}:{urllib.parse.quote(password, safe='')}@" if password else f"{user}@"
    host = params.get("host", "")
    if host.startswith("/") or not host:
        netloc = credentials
    else:
        netloc = (
            credentials
            + params.pop("host")
            + (f":{params.pop('port')}" if "port" in params else "")
        )
    query = urllib.parse.urlencode(params, safe="/")
    return f"postgresql://{netloc}/{dbname}" + (f"?{query}" if query else "")
