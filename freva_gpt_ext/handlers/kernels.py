"""`kernelcontext`: what a turn in the caller's notebook kernel would tell the LLM of that kernel's variables."""

from __future__ import annotations

from ..tools.kernel_context import INTROSPECTION
from .base import ApiError, ChatbotHandler


class KernelContextHandler(ChatbotHandler):
    route_name = "kernelcontext"

    async def handle(self) -> None:
        kernel_id = self.str_param("kernel_id") or ""
        if not kernel_id:
            raise ApiError(422, "The parameter 'kernel_id' is required.")
        # The caller's own kernel only: any other answers 404 like an unknown one; standalone 422.
        await self.service.kernel_choice(self.owner, kernel_id, None)
        found = await self.service.kernel_summary(kernel_id)
        self.reply(
            {
                "kernel_id": kernel_id,
                "spec": found.spec,
                "language": found.language,
                "summary": found.summary,
                "variables": list(found.variables),
                "state": found.state,
                # The code that asked: fixed and ours, shown so that the user can see what runs in their kernel.
                "code": INTROSPECTION.strip(),
            }
        )
