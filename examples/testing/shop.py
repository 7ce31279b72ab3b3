"""A small shop: placing an order enqueues the work that follows it."""

from __future__ import annotations

from datetime import timedelta

from hookqueue import Queue, Task


class MailServerDown(ConnectionError):
    """The mail server refused the connection (a transient failure worth retrying)."""


class Mailer:
    """Sends e-mail; here it only keeps what it sent, and can be switched off."""

    def __init__(self) -> None:
        self.sent: list[dict[str, str]] = []
        self.down = False

    def send(self, to: str, template: str, order_id: str) -> None:
        if self.down:
            raise MailServerDown("mail.example.com refused the connection")
        self.sent.append({"to": to, "template": template, "order_id": order_id})


def place_order(queue: Queue, order_id: str, email: str, total_cents: int) -> None:
    """Confirm the order by e-mail now, check large orders for fraud (urgently: priority 10
    runs before the default 100), and ask for a review three days later."""
    queue.enqueue(
        "send_email",
        {"to": email, "template": "order_confirmation", "order_id": order_id},
        idempotency_key=f"confirmation-{order_id}",
    )
    if total_cents >= 100_00:
        queue.enqueue(
            "fraud_check", {"order_id": order_id, "total_cents": total_cents}, priority=10
        )
    queue.enqueue(
        "send_email",
        {"to": email, "template": "review_request", "order_id": order_id},
        delay=timedelta(days=3),
    )


def register_handlers(queue: Queue, mailer: Mailer) -> None:
    """The shop's task handlers, for its workers (and its tests)."""

    def send_email(task: Task) -> dict[str, str]:
        mailer.send(**task.payload)
        return {"sent_to": task.payload["to"]}

    async def fraud_check(task: Task) -> dict[str, bool]:
        return {"suspicious": task.payload["total_cents"] > 5_000_00}

    queue.handlers.register_handler("send_email", send_email)
    queue.handlers.register_handler("fraud_check", fraud_check)
