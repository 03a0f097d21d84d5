from rest_framework.routers import SimpleRouter

from referrals.api.views import ApplicantViewSet, ConsentTextViewSet, ConsentViewSet

router = SimpleRouter()
router.register("consent-texts", ConsentTextViewSet, basename="consent-text")
router.register("applicants", ApplicantViewSet, basename="applicant")
router.register("consents", ConsentViewSet, basename="consent")

urlpatterns = router.urls
