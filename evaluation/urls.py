from __future__ import annotations

from django.urls import URLPattern, URLResolver, path

from evaluation import apis, views

urlpatterns: list[URLPattern | URLResolver] = [
    path("proposals/", views.proposal_queue, name="proposals"),
    path("proposals/new", views.proposal_propose, name="proposal-propose"),
    path("proposals/<uuid:public_id>/", views.proposal_detail, name="proposal-detail"),
    path("proposals/<uuid:public_id>/review", views.proposal_review, name="proposal-review"),
    path("handoffs/", views.handoff_queue, name="handoffs"),
    path("handoffs/next", views.handoff_claim_next, name="handoff-claim-next"),
    path("handoffs/<uuid:public_id>/", views.handoff_detail, name="handoff-detail"),
    path("handoffs/<uuid:public_id>/act", views.handoff_act, name="handoff-act"),
    path("webhooks/deliveries/", views.webhook_deliveries, name="webhook-deliveries"),
    path(
        "webhooks/deliveries/<int:delivery_id>/resend",
        views.webhook_resend,
        name="webhook-resend",
    ),
    path("sweeps/", views.sweep_list, name="sweeps"),
    path("calibration/", views.calibration, name="calibration"),
    path("sweeps/start", views.sweep_start, name="sweep-start"),
    path("sweeps/<int:run_id>/resume", views.sweep_resume, name="sweep-resume"),
    path("api/v1/proposals", apis.ProposalListApi.as_view(), name="api-proposals"),
    path(
        "api/v1/proposals/<uuid:public_id>",
        apis.ProposalDetailApi.as_view(),
        name="api-proposal",
    ),
    path(
        "api/v1/proposals/<uuid:public_id>/approve",
        apis.ProposalApproveApi.as_view(),
        name="api-proposal-approve",
    ),
    path(
        "api/v1/proposals/<uuid:public_id>/reject",
        apis.ProposalRejectApi.as_view(),
        name="api-proposal-reject",
    ),
    path("api/v1/handoffs", apis.HandoffCreateApi.as_view(), name="api-handoffs"),
    path("api/v1/handoffs/<uuid:public_id>", apis.HandoffDetailApi.as_view(), name="api-handoff"),
    path(
        "api/v1/decisions/<str:decision_id>/checks",
        apis.OutputCheckCreateApi.as_view(),
        name="api-decision-checks",
    ),
]
