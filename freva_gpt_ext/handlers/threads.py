"""Routes over stored threads: read, list, search, rename, delete, fork, feedback."""

from __future__ import annotations

from ..core.turns import fork_index, new_thread_id
from ..variants import USER, history_with_interruptions
from .base import ApiError, ChatbotHandler

MAX_PAGE = 100
MAX_QUERY = 1000


class PagedHandler(ChatbotHandler):
    def paging(self) -> tuple[int, int]:
        """(page size, page); a larger page size than MAX_PAGE is served as MAX_PAGE, as the upstream does."""
        limit = min(self.int_param("num_threads", default=20, low=1), MAX_PAGE)
        return limit, self.int_param("page", default=0)


class GetThreadHandler(ChatbotHandler):
    route_name = "getthread"

    async def handle(self) -> None:
        thread_id = self.thread_param()
        show_tools = self.bool_param("show_tools", False)
        store = await self.store_for()
        await self.readable_thread(store, thread_id)
        variants = history_with_interruptions(await store.read(thread_id))
        self.reply([v.to_dict() for v in variants if show_tools or not v.tools_only])


class UserThreadsHandler(PagedHandler):
    route_name = "getuserthreads"

    async def handle(self) -> None:
        limit, page = self.paging()
        store = await self.store_for()
        threads, total = await store.list_threads(self.owner, limit, page * limit)
        self.reply([[t.listing() for t in threads], total])


class SearchThreadsHandler(PagedHandler):
    route_name = "searchthreads"

    async def handle(self) -> None:
        query = self.str_param("query", required=True) or ""
        if not query.strip():
            raise ApiError(422, "The parameter 'query' must not be empty.")
        if len(query) > MAX_QUERY:
            # SQLite refuses long LIKE patterns; no one searches for more than a sentence.
            raise ApiError(413, f"The query is longer than {MAX_QUERY} characters.")
        limit, page = self.paging()
        store = await self.store_for()
        threads, total = await store.search(self.owner, query.strip(), limit, page * limit)
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
        store = await self.store_for()
        await self.owned_thread(store, thread_id)
        await store.set_topic(thread_id, topic)
        self.reply({"detail": "Topic updated."})


class DeleteThreadHandler(ChatbotHandler):
    route_name = "deletethread"

    async def handle(self) -> None:
        thread_id = self.thread_param()
        store = await self.store_for()
        await self.owned_thread(store, thread_id)
        if await store.lease_holder(thread_id) is not None:
            raise ApiError(409, "The thread is streaming; stop it first.")
        await store.delete(thread_id)
        await self.service.close_thread(thread_id, store)
        self.reply({"detail": "Thread deleted."})


class EditThreadHandler(ChatbotHandler):
    route_name = "editthread"

    async def handle(self) -> None:
        source = self.thread_param("source_thread_id")
        user_index = self.int_param("user_index")
        show_tools = self.bool_param("show_tools", False)
        store = await self.store_for()
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
        start = fork_index(info, self.owner, len(history))
        await store.fork(source, new_id, self.owner, history, info.topic, fork_from_index=start)
        shown = [v.to_dict() for v in history if show_tools or not v.tools_only]
        self.reply({"new_thread_id": new_id, "history": shown})


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
        store = await self.store_for()
        await self.owned_thread(store, thread_id)
        if feedback == "remove":
            if not await store.set_feedback(thread_id, index, None):
                raise ApiError(404, "Feedback not found.")
            self.reply({"detail": "Feedback removed."})
            return
        if not await store.set_feedback(thread_id, index, feedback):
            raise ApiError(422, f"The parameter 'feedback_index' is out of range: no answer {index}.")
        self.reply({"detail": "Feedback saved."})
