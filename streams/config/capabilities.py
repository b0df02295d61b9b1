"""What this version of Herald can run: checked at start so a worker refuses clearly.

Every integration field is parsed and validated by the models; this module refuses the ones
whose behaviour is not implemented yet, naming the field, instead of misbehaving at runtime.
"""

from __future__ import annotations

from streams.config.models import HeraldConfig
from streams.errors import ConfigError


def check_supported(config: HeraldConfig, file: str) -> None:
    """Refuse what this version cannot do yet, naming the field, rather than misbehave."""
    problems = []
    home = config.home
    for i, integration in enumerate(config.integrations):
        if integration.security_protocol != "PLAINTEXT":
            problems.append(
                f"{file}: integrations[{i}](name={integration.name}).connectionSecurity: "
                f"{integration.connectionSecurity!r} is not supported by this version yet; "
                "use PLAINTEXT"
            )
        if integration.sendingProtocol.value != "STRING":
            problems.append(
                f"{file}: integrations[{i}](name={integration.name}).sendingProtocol: AVRO is "
                "not supported by this version yet; use STRING"
            )
    for i, handler in enumerate(config.eventHandlers):
        integration = config.integration(handler.integration_name)
        if integration.bootstrapServers != home.bootstrapServers:
            problems.append(
                f"{file}: eventHandlers[{i}](name={handler.name}).event: consuming from "
                f"integration {integration.name!r} on another cluster than the home integration "
                f"{home.name!r} is not supported yet; consume it from a Herald deployment whose "
                "home integration it is"
            )
    if problems:
        raise ConfigError(problems)
