"""Routes over stored threads: read, list, search, rename, delete, fork, feedback."""

from __future__ import annotations

from ..variants import TOOL_VARIANTS, USER, history_with_interruptions
from .base import ApiError, ChatbotHandler
from .meta import new_thread_id

MAX_PAGE = 100


class GetThreadHandler(ChatbotHandler):
    route_name = "getthread"

    async def handle(self) -> None:
        thread_id = self.thread_param()
        show_tools = self.bool_param("show_tools", False)
        store = self.store_for()
        await self.readable_thread(store, thread_id)
        variants = history_with_interruptions(await store.read(thread_id))
        self.reply([v.to_dict() for v in variants if show_tools or v.variant not in TOOL_VARIANTS])


class UserThreadsHandler(ChatbotHandler):
    route_name = "getuserthreads"

    async def handle(self) -> None:
        limit = self.int_param("num_threads", default=20, low=1, high=MAX_PAGE)
        page = self.int_param("page", default=0)
        threads, total = await self.store_for().list_threads(self.owner, limit, page * limit)
        self.reply([[t.listing() for t in threads], total])


class SearchThreadsHandler(ChatbotHandler):
    route_name = "searchthreads"

    async def handle(self) -> None:
        query = self.str_param("query", required=True) or ""
        if not query.strip():
            raise ApiError(422, "The parameter 'query' must not be empty.")
        limit = self.int_param("num_threads", default=20, low=1, high=MAX_PAGE)
        page = self.int_param("page", default=0)
        threads, total = await self.store_for().search(self.owner, query.strip(), limit, page * limit)
        self.reply([[t.listing() for t in threads], total])


class SetTopicHandler(ChatbotHandler):
    route_name = "setthreadtopic"

    async def handle(self) -> None:
        thread_id = self.thread_param()
        topic = (self.str_param("topic", required=True) or "").strip()
        if not topic:
            raise ApiError(422, "The parameter 'topic' must not be empty.")
        if len(topic) > 500:
            raise ApiError(413, "The topic is longer than 500 characters.")
        store = self.store_for()
        await self.owned_thread(store, thread_id)
        await store.set_topic(thread_id, topic)
        self.reply({"detail": "Topic updated."})


class DeleteThreadHandler(ChatbotHandler):
    route_name = "deletethread"

    async def handle(self) -> None:
        thread_id = self.thread_param()
        store = self.store_for()
        await self.owned_thread(store, thread_id)
        if await store.lease_holder(thread_id) is not None:
            raise ApiError(409, "The thread is streaming; stop it first.")
        await store.delete(thread_id)
        await self.app.close_thread(thread_id)
        self.reply({"detail": "Thread deleted."})


class EditThreadHandler(ChatbotHandler):
    route_name = "editthread"

    async def handle(self) -> None:
        source = self.thread_param("source_thread_id")
        user_index = self.int_param("user_index")
        store = self.store_for()
        info = await self.readable_thread(store, source)
        variants = history_with_interruptions(await store.read(source))
        user_positions = [i for i, v in enumerate(variants) if v.variant == USER]
        if user_index >= len(user_positions):
            raise ApiError(
                422,
                f"The parameter 'user_index' is out of range: the thread has {len(user_positions)} user messages.",
            )
        history = variants[: user_positions[user_index]]
        new_id = new_thread_id()
        await store.fork(source, new_id, self.owner, history, info.topic)
        self.reply({"new_thread_id": new_id, "history": [v.to_dict() for v in history]})


class FeedbackHandler(ChatbotHandler):
    route_name = "userfeedback"

    async def handle(self) -> None:
        thread_id = self.thread_param()
        index = self.int_param("feedback_index")
        feedback = (self.str_param("feedback", required=True) or "").strip()
        if not feedback:
            raise ApiError(422, "The parameter 'feedback' must be 'up', 'down', free text or 'remove'.")
        if len(feedback) > 5000:
            raise ApiError(413, "The feedback is longer than 5000 characters.")
        store = self.store_for()
        await self.owned_thread(store, thread_id)
        if feedback == "remove":
            if not await store.set_feedback(thread_id, index, None):
                raise ApiError(404, "Feedback not found.")
            self.reply({"detail": "Feedback removed."})
            return
        if not await store.set_feedback(thread_id, index, feedback):
            raise ApiError(422, f"The parameter 'feedback_index' is out of range: no answer {index}.")
        self.reply({"detail": "Feedback saved."})
