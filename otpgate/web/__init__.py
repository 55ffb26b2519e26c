"""The web portal: self-service enrollment, help desk and /metrics (``service.web_services``)."""
