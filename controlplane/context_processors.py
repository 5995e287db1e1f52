from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from controlplane.roles import ADMIN, OPERATOR, REVIEWER, VIEWER, user_has_role


def roles(request: HttpRequest) -> dict[str, Any]:
    user = getattr(request, "user", None)
    return {
        "can_view": user_has_role(user, VIEWER),
        "can_review": user_has_role(user, REVIEWER),
        "can_operate": user_has_role(user, OPERATOR),
        "is_admin_role": user_has_role(user, ADMIN),
    }
