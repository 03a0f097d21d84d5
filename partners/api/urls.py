from rest_framework.routers import SimpleRouter

from partners.api.views import ContractViewSet, PartnerViewSet

router = SimpleRouter()
router.register("partners", PartnerViewSet, basename="partner")
router.register("contracts", ContractViewSet, basename="contract")

urlpatterns = router.urls
