"""Background jobs: the list of those a user may follow, and one page per job whose progress bar
moves without reloading (``static/jobs/job.js`` polls the job's small JSON endpoint) and which shows
the result when the job has finished — and, for an evidence export, the file, downloadable by the
person who asked for it only.

Jobs are started where their subject is: the ledger checkpoints list (verify the ledger), an
applicant's export page and the applicants list (export evidence), the referrals list (retry the
selected); each start calls a service in ``referrals.services.jobs``."""

from __future__ import annotations

import uuid

from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, JsonResponse
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.cache import add_never_cache_headers, patch_cache_control
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from config.admin_tools import ReadOnlyAdmin
from referrals.admin.display import shanghai_time
from referrals.models import Job
from referrals.services import jobs as job_services

POLL_INTERVAL_MS = 500


def job_url(job: Job, name: str = "change", current_app: str = "admin") -> str:
    return reverse(f"admin:referrals_job_{name}", args=[job.pk], current_app=current_app)


def _private(response):
    """A job's progress and its file are one person's business: never kept in a cache."""
    add_never_cache_headers(response)
    patch_cache_control(response, private=True)
    return response


@admin.register(Job)
class JobAdmin(ReadOnlyAdmin):
    job_template = "admin/referrals/jobs/job.html"
    result_template = "admin/referrals/jobs/result.html"
    list_display = ("job_display", "kind", "status_display", "progress_bar", "requested_by", "created_at", "finished")
    list_display_links = ("job_display",)
    list_filter = ("kind", "status")
    list_select_related = ("requested_by",)
    ordering = ("-created_at",)

    class Media:
        css = {"all": ["jobs/jobs.css"]}  # the progress bars in the list

    # A job is for those who may do what it does (an export: for its requester only), whatever
    # Django's model permissions say; no role is granted any on the Job model itself.
    def get_queryset(self, request):
        return job_services.jobs_visible_to(request.user).select_related("requested_by")

    def has_module_permission(self, request):
        return job_services.may_start_any_job(request.user)

    def has_view_permission(self, request, obj=None):
        if obj is None:
            return job_services.may_start_any_job(request.user)
        return job_services.job_visible_to(request.user, obj)

    # --- columns -------------------------------------------------------------------------------
    @admin.display(description=_("job"))
    def job_display(self, job: Job) -> str:
        return str(job.pk)[:8]

    @admin.display(description=_("status"), ordering="status")
    def status_display(self, job: Job) -> SafeString:
        return format_html('<span class="job-status job-status-{}">{}</span>', job.status, job.get_status_display())

    @admin.display(description=_("progress"))
    def progress_bar(self, job: Job) -> SafeString:
        return format_html(
            '<progress class="job-progress" max="100" value="{}">{}%</progress> <span class="job-percent">{}%</span>',
            job.percent,
            job.percent,
            job.percent,
        )

    @admin.display(description=_("finished at"), ordering="finished_at")
    def finished(self, job: Job) -> str:
        return shanghai_time(job.finished_at)

    # --- a job's page, its progress and its file --------------------------------------------------
    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        wrap = self.admin_site.admin_view
        return [
            path("<path:object_id>/progress/", wrap(self.progress_view), name="{}_{}_progress".format(*info)),
            path("<path:object_id>/download/", wrap(self.download_view), name="{}_{}_download".format(*info)),
            *super().get_urls(),
        ]

    def _job(self, request, object_id) -> Job:
        """The job, or 404; 403 for someone who may not follow it (checked before anything is read)."""
        if not job_services.may_start_any_job(request.user):
            raise PermissionDenied
        try:
            pk = uuid.UUID(str(unquote(object_id)))
        except ValueError:
            raise Http404 from None
        job = Job.objects.select_related("requested_by").filter(pk=pk).first()
        if job is None:
            raise Http404
        if not job_services.job_visible_to(request.user, job):
            raise PermissionDenied
        return job

    def change_view(self, request, object_id, form_url="", extra_context=None):
        job = self._job(request, object_id)
        request.current_app = self.admin_site.name
        context = {
            **self.admin_site.each_context(request),
            "title": str(job),
            "opts": self.opts,
            "original": job,
            "job": job,
            "counts": self.counts(job),
            "requested_at": shanghai_time(job.created_at),
            "finished_at": shanghai_time(job.finished_at),
            "result_html": self.result_html(request, job),
            "poll_url": job_url(job, "progress", self.admin_site.name),
            "poll_interval": POLL_INTERVAL_MS,
            **(extra_context or {}),
        }
        return _private(TemplateResponse(request, self.job_template, context))

    def progress_view(self, request, object_id):
        """What the job's page polls: its status and counts; once finished, its result as the same
        HTML fragment the page shows (rendered and escaped here, so the script needs no words)."""
        job = self._job(request, object_id)
        return _private(
            JsonResponse(
                {
                    "id": str(job.pk),
                    "status": job.status,
                    "status_label": job.get_status_display(),
                    "finished": job.finished,
                    "done": job.done,
                    "total": job.total,
                    "percent": job.percent,
                    "counts": self.counts(job),
                    "finished_at": shanghai_time(job.finished_at),
                    "error": job.error,
                    "result_html": self.result_html(request, job) if job.finished else "",
                }
            )
        )

    def download_view(self, request, object_id):
        job = self._job(request, object_id)
        if not job_services.job_download_allowed(request.user, job):
            raise PermissionDenied
        location = job_services.job_path(job)
        if not location.is_file():
            raise Http404
        return _private(FileResponse(location.open("rb"), as_attachment=True, filename=location.name))

    @staticmethod
    def counts(job: Job) -> str:
        return gettext("%(done)d of %(total)d") % {"done": job.done, "total": job.total}

    def result_html(self, request, job: Job) -> str:
        context = {
            "job": job,
            "result": job.result or {},
            "download_url": (
                job_url(job, "download", self.admin_site.name)
                if job_services.job_download_allowed(request.user, job)
                else ""
            ),
        }
        return render_to_string(self.result_template, context, request=request)
