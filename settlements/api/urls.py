from rest_framework.routers import SimpleRouter

from settlements.api.views import RunViewSet, StatementViewSet

router = SimpleRouter()
router.register("settlements/runs", RunViewSet, basename="settlement-run")
router.register("statements", StatementViewSet, basename="statement")

urlpatterns = router.urls
