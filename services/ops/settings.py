"""Settings of the ops service (`STREAMML_OPS_*`)."""

from __future__ import annotations

from pydantic import Field, field_validator

from streams.settings import Settings


class OpsSettings(Settings):
    """Lag exporter, metrics history and dashboard (`streamml run ops`); the port is `STREAMML_OPS_PORT`."""

    ops_host: str = "127.0.0.1"
    ops_interval_s: float = Field(5.0, ge=0.2, description="How often targets are scraped and lag is measured.")
    ops_history_s: float = Field(6 * 3600.0, gt=0, description="How much metrics history the dashboard keeps.")
    ops_targets: str = Field(
        "", description="name=url,... of /metrics endpoints to scrape; empty = the embedded stack's processes.")
    ops_group_prefix: str = Field("streamml", description="Consumer groups whose lag is exported.")
    ops_scrape_timeout_s: float = Field(2.0, gt=0)

    @field_validator("ops_targets")
    @classmethod
    def _targets_well_formed(cls, value: str) -> str:
        for item in filter(None, (v.strip() for v in value.split(","))):
            name, _, url = item.partition("=")
            if not name or not url.startswith(("http://", "https://")):
                raise ValueError(f"STREAMML_OPS_TARGETS item {item!r} is not name=http(s)://host:port/metrics")
        return value

    def targets(self) -> dict[str, str]:
        """Configured name -> /metrics URL (empty: discover the embedded stack's processes)."""
        items = (v.strip() for v in self.ops_targets.split(","))
        return dict(item.split("=", 1) for item in items if item)

    @property
    def history_rounds(self) -> int:
        return max(int(self.ops_history_s / self.ops_interval_s), 2)
