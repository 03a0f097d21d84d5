"""Print the current one-time code of a user's authenticator — for the demo and development only.

Anyone can run ``make run`` and sign in without a phone: the first sign-in shows the enrolment QR
code; ``manage.py otp_code <username>`` prints the code that an authenticator app would show for
that (pending or confirmed) device. Refused with DEBUG off: in production only the user's phone
knows the key.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice


class Command(BaseCommand):
    help = "Print the current one-time code of a user's authenticator (DEBUG only: demo and development)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")

    def handle(self, *args, **options) -> None:
        if not settings.DEBUG:
            raise CommandError("otp_code only runs with DEBUG on: in production the code is on the user's phone.")
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"No user {options['username']!r}.")
        device = TOTPDevice.objects.filter(user=user).order_by("-confirmed", "-id").first()
        if device is None:
            raise CommandError(f"{user.username} has no authenticator yet: sign in once to see the enrolment page.")
        totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
        self.stdout.write(f"{totp.token():0{device.digits}d}")
