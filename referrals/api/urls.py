from django.urls import path
from rest_framework.routers import SimpleRouter

from referrals.api.callbacks import PartnerCallbackView
from referrals.api.views import (
    ApplicantViewSet,
    ConsentTextViewSet,
    ConsentViewSet,
    LoanViewSet,
    ReclaimViewSet,
    ReferralViewSet,
)

router = SimpleRouter()
router.register("consent-texts", ConsentTextViewSet, basename="consent-text")
router.register("applicants", ApplicantViewSet, basename="applicant")
router.register("consents", ConsentViewSet, basename="consent")
router.register("referrals", ReferralViewSet, basename="referral")
router.register("loans", LoanViewSet, basename="loan")
router.register("reclaims", ReclaimViewSet, basename="reclaim")

urlpatterns = [
    path("partners/<str:code>/callbacks/", PartnerCallbackView.as_view(), name="partner-callbacks"),
    *router.urls,
]
