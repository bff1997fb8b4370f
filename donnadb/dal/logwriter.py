"""``write_log`` for every store: the entry is checked and shaped once (values.log_line);
each store only says where the line goes (``_store_log``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from donnadb.dal.values import log_line, now_utc


class LogWriterMixin:
    def write_log(
        self,
        level: str,
        message: str,
        context: Mapping[str, Any] | None = None,
        *,
        trace_id: str | None = None,
        ip_address: str | None = None,
        user_agent: str | None = None,
        request_uri: str | None = None,
    ) -> str:
        """See :meth:`donnadb.dal.protocol.DataAccess.write_log`."""
        line = log_line(level, message, context, trace_id=trace_id, ip_address=ip_address,
                        user_agent=user_agent, request_uri=request_uri, at=now_utc())
        return self._store_log(line)

    def _store_log(self, line: dict[str, Any]) -> str:
        """Write a checked log_line object; return the entry's id."""
        raise NotImplementedError
