"""The status page: static HTML, JavaScript and CSS served by every worker (agents.web.page)."""
