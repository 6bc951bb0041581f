"""The SMTP fixture is a real server: Django's SMTP backend delivers to it."""

import smtplib

import pytest
from django.core.mail import EmailMultiAlternatives, send_mail

from tests.e2e.conftest import SMTP_REJECT, SMTP_TEMPFAIL


def test_send_mail_with_html_alternative_reaches_the_server(smtp_server):
    sent = send_mail(
        subject="Approve churn-model v3 for production?",
        message="Plain: please review churn-model v3.",
        from_email="Regent <regent@example.com>",
        recipient_list=["bob@example.com"],
        html_message="<p>HTML: please review <b>churn-model v3</b>.</p>",
    )

    assert sent == 1
    [received] = smtp_server.messages
    assert received.mail_from == "regent@example.com"
    assert received.rcpt_tos == ["bob@example.com"]
    assert received.message["Subject"] == "Approve churn-model v3 for production?"
    assert received.message["To"] == "bob@example.com"
    assert received.message.get_content_type() == "multipart/alternative"
    assert received.body("plain").strip() == "Plain: please review churn-model v3."
    assert "<b>churn-model v3</b>" in received.body("html")


@pytest.mark.parametrize(
    ("reply", "at", "error"),
    [
        (SMTP_TEMPFAIL, "DATA", smtplib.SMTPDataError),
        (SMTP_REJECT, "RCPT", smtplib.SMTPRecipientsRefused),
    ],
)
def test_server_can_refuse_mail(smtp_server, reply, at, error):
    smtp_server.respond_with(reply, at=at)
    message = EmailMultiAlternatives("Hi", "body", "regent@example.com", ["bob@example.com"])

    with pytest.raises(error) as raised:
        message.send()

    assert reply.split()[0] in str(raised.value)
    assert smtp_server.messages == []
