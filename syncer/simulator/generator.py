"""Deterministic test data for the fake Runtype API.

Everything comes from `random.Random(seed)`, and every timestamp is a whole second before
`start`, so the same arguments always give the same Upstream. The fields the vendor's SDK
added (agent mode and takeover, delivery status, attachments) come from a second generator
of the same seed, so adding them left every other field of a seed's data as it was.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from .upstream import SURFACES, Upstream

DEFAULT_START = datetime(2024, 6, 1, tzinfo=UTC)

WORDS = (
    "account billing invoice refund order delivery shipping package tracking number password "
    "login reset email phone update upgrade downgrade plan subscription annual monthly trial "
    "cancel renew charge card payment failed declined approved receipt support ticket agent "
    "team manager help please thanks thank you hello hi morning evening today tomorrow "
    "yesterday week soon later quickly error bug crash issue problem question answer feature "
    "request feedback app mobile desktop browser chrome firefox safari android iphone settings "
    "profile notification export import report dashboard api key token webhook integration "
    "slack calendar meeting schedule time zone address customer product price discount coupon "
    "the a an and or but with without for from into about on in at by of to is are was "
    "were be been it this that these those my your our their can could would should will "
    "don't can't won't it's I'm we're you're isn't doesn't C++ C# Node.js e-mail follow-up "
    "re-open log-in sign-up \"urgent\" \"premium\" 'beta' (again) [draft] 50% $19.99 #1234 "
    "café naïve résumé Straße façade Zürich São Paulo München 東京 注文 配送 返金 ありがとう "
    "你好 谢谢 订单 مرحبا شكرا طلب الدفع 🙂 🚀 👍🏽 ❤️ 🎉 😅 ✅"
).split()
ENDINGS = (".", ".", ".", "?", "!", "...", " 🙂", "?!")
NAMES = (
    "Jane Doe", "José Álvarez", "Zoë Brontë", "Łukasz Wójcik", "Søren Kierkegård", "王芳",
    "田中 太郎", "김민준", "محمد العلي", "فاطمة الزهراء", "Οδυσσέας Ελύτης", "Nguyễn Văn An",
    "Siobhán O'Brien", "Anne-Marie Dubois", "Ada Lovelace", "Grace Hopper", "Alan Turing",
)
SUBJECTS = (
    "Project Update Discussion", "Refund request 💸", "Can't log in after password reset",
    "C++ SDK crashes on startup", "Question about the \"Pro\" plan", "Facture en retard — café",
    "配送について", "مشكلة في الدفع", "Upgrade to annual billing", "Bug: app crashes 🚀",
    "Order #1234 not delivered", "Re: follow-up on ticket", "Straße address won't validate",
    "Webhook retries / timeouts", "50% discount coupon doesn't apply",
)
TIMEZONES = ("America/New_York", "Europe/Paris", "Asia/Tokyo", "Asia/Riyadh", "UTC",
             "Australia/Sydney", "America/Sao_Paulo")
TAGS = ("vip", "billing", "bug", "churn-risk", "enterprise", "日本", "عربي", "🔥")
LOCALES = ("en-US", "fr-FR", "ja-JP", "ar-SA", "de-DE", "pt-BR")
GAPS = (0, 0, 0, 1, 2, 5, 30, 45, 60, 120, 300, 900, 3600)  # seconds between messages
NULLABLE_CONVERSATION = ("externalParticipantId", "externalThreadId", "participantEmail",
                         "participantName", "subject", "timezone")
TAKEOVER_SHARE = 0.3        # of open conversations with a message: about 15% of all
TAKEOVER_ACTORS = (("user", "user_ops_"), ("user", "user_agent_"), ("api_key", "key_"),
                   ("system", "escalation_rule_"))
TAKEOVER_REASONS = ("Customer asked for a human", "Billing dispute — needs a refund decision",
                    "Agent confidence below threshold", "VIP account", "Complaint escalated",
                    None)
# (status, weight) of outbound messages; failed and bounced ones may say why
DELIVERY = (("delivered", 60), ("sent", 15), ("pending", 8), ("failed", 10), ("bounced", 7))
DELIVERY_ERRORS = {"failed": ("Recipient unreachable", "Channel timeout after 30s",
                              "Rate limited by provider (HTTP 429)"),
                   "bounced": ("550 5.1.1 Mailbox does not exist", "Number is not on WhatsApp",
                               "Message rejected: content policy")}
ATTACHMENTS = (("invoice-{n}.pdf", "application/pdf"), ("screenshot {n}.png", "image/png"),
               ("photo_{n}.jpg", "image/jpeg"), ("export-{n}.csv", "text/csv"),
               ("voice note {n}.ogg", "audio/ogg"), ("résumé-{n}.docx",
               "application/vnd.openxmlformats-officedocument.wordprocessingml.document"))
ATTACHMENT_SHARE = 0.06


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(3, 25))) + rng.choice(ENDINGS)


def _long_text(rng: random.Random) -> str:
    target = rng.randint(3000, 9000)
    parts, size = [], 0
    while size < target:
        part = _sentence(rng)
        parts.append(part)
        size += len(part) + 1
    return "\n".join(parts)


def _email(rng: random.Random, name: str, index: int) -> str:
    local = name.lower().replace(" ", ".").replace("'", "")
    if not local.isascii():
        local = f"user{index}"
    email = f"{local}@example.com"
    return email.title() if rng.random() < 0.1 else email


def generate(seed: int = 1, conversations: int = 50, *, messages_per_conversation: int = 8,
             big_conversations: int = 2, start: datetime | None = None,
             message_bumps_updated: bool = False) -> Upstream:
    """Build an Upstream of `conversations` conversations, all timestamps before `start`.

    `message_bumps_updated` shapes the history as a server of that kind would have made it: when
    False, a share of conversations was last updated before their last message arrived
    (lastMessageAt > updatedAt), as happens upstream when messages do not bump updatedAt.

    Small conversations get 1..2*messages_per_conversation-1 messages; `big_conversations` of
    them get 130-350 (over the 100 cap); about one in sixteen gets none.
    """
    rng = random.Random(seed)
    vendor = random.Random(f"vendor fields {seed}")
    start = (start or DEFAULT_START).astimezone(UTC).replace(microsecond=0)
    hot = (start - timedelta(days=1), start - timedelta(days=1, hours=2))
    upstream = Upstream(seed=seed)
    big = set(rng.sample(range(conversations), min(big_conversations, conversations)))
    ordinary = [i for i in range(conversations) if i not in big]
    all_null = ordinary[0] if ordinary else -1
    with_extras = ordinary[1] if len(ordinary) > 1 else -1
    with_long = ordinary[2] if len(ordinary) > 2 else -1
    metadata_pool = [{"platform": s["type"], "priority": p}
                     for s in SURFACES.values() for p in ("normal", "high")]
    surface_ids = sorted(SURFACES)
    ids: set[str] = set()
    previous_created = start - timedelta(days=30)
    choice, rand, randint, getrandbits = rng.choice, rng.random, rng.randint, rng.getrandbits
    for i in range(conversations):
        cid = f"conv_{getrandbits(80):020x}"
        while cid in ids:
            cid = f"conv_{getrandbits(80):020x}"
        ids.add(cid)
        surface_id = choice(surface_ids)
        created = start - timedelta(seconds=randint(20 * 86400, 400 * 86400))
        if i % 10 == 7:
            created = previous_created
        previous_created = created
        name = NAMES[i % len(NAMES)]
        record = {
            "createdAt": created,
            "externalParticipantId": f"user_{randint(10**8, 10**9 - 1)}",
            "externalThreadId": f"thread_{randint(10**8, 10**9 - 1)}",
            "id": cid, "lastMessageAt": None, "messageCount": 0,
            "participantEmail": _email(rng, name, i), "participantName": name,
            "status": rng.choices(("open", "closed", "archived"), (50, 35, 15))[0],
            "subject": SUBJECTS[i % len(SUBJECTS)] if rand() < 0.5 else _sentence(rng)[:80],
            "surfaceId": surface_id, "timezone": choice(TIMEZONES), "updatedAt": created,
            "context": ({"locale": choice(LOCALES), "channel": SURFACES[surface_id]["type"],
                         "pageUrl": f"https://example.com/help/{randint(1, 999)}"}
                        if rand() < 0.8 else {}),
            "participantMetadata": ({"plan": choice(("free", "pro", "enterprise")),
                                     "vip": rand() < 0.2} if rand() < 0.7 else {}),
            "surface": dict(SURFACES[surface_id]),
        }
        for field in NULLABLE_CONVERSATION:
            if i == all_null or rand() < 0.08:
                record[field] = None
        if i == with_extras or rand() < 0.08:
            record["priorityScore"] = randint(1, 5)
            record["tags"] = rng.sample(TAGS, randint(1, 3))

        if i in big:
            count = randint(130, 350)
        elif i == all_null or i % 16 == 9:
            count = 0
        else:
            count = randint(1, max(1, 2 * messages_per_conversation - 1))
        messages = []
        at = created
        for n in range(count):
            at = at + timedelta(seconds=choice(GAPS))
            role = "user" if n % 2 == 0 or rand() < 0.1 else "assistant"
            long = (i == with_long and n == 0) or rand() < 0.003
            message = {
                "content": _long_text(rng) if long else _sentence(rng),
                "conversationId": cid, "createdAt": at,
                "direction": ("inbound" if role == "user" else "outbound")
                if rand() < 0.9 else None,
                "externalMessageId": f"msg_ext_{randint(10**9, 10**10 - 1)}"
                if rand() < 0.7 else None,
                "flowStepResultId": f"stepres_{getrandbits(48):012x}"
                if role == "assistant" and rand() < 0.6 else None,
                "id": f"msg_{getrandbits(80):020x}",
                "metadata": dict(choice(metadata_pool)), "role": role,
            }
            if n == 0 and i == with_long:
                message["direction"] = message["externalMessageId"] = None
                message["flowStepResultId"] = None
            if rand() < 0.03:
                message["reactions"] = ["👍"]
                message["editCount"] = randint(1, 3)
            messages.append(message)
        messages.sort(key=lambda m: (m["createdAt"], m["id"]))
        if messages:
            record["messageCount"] = len(messages)
            record["lastMessageAt"] = messages[-1]["createdAt"]
        record["updatedAt"] = (record["lastMessageAt"] or created) + timedelta(
            seconds=randint(0, 2 * 86400))
        if messages and not message_bumps_updated and rand() < 0.4:
            span = (record["lastMessageAt"] - created).total_seconds()
            record["updatedAt"] = created + timedelta(seconds=int(span * rand()))
        if i % 10 == 3:
            record["updatedAt"] = hot[(i // 10) % 2]
        for message in messages:
            message["metadata"].update(_message_extras(vendor, message))
        record.update(_agent_mode(vendor, record, messages))
        upstream._load(record, messages)
    return upstream


def _agent_mode(rng: random.Random, record: dict, messages: list[dict]) -> dict:
    """agentMode and the takeover fields: a share of open conversations was taken over by a
    human some time after its first message (and before its last update); the rest is auto."""
    first = messages[0]["createdAt"] if messages else None
    fields = {"agentMode": "auto", "takeoverActorId": None, "takeoverActorType": None,
              "takeoverAt": None, "takeoverReason": None}
    if (rng.random() >= TAKEOVER_SHARE or record["status"] != "open" or first is None
            or record["updatedAt"] <= first):
        return fields
    span = int((record["updatedAt"] - first).total_seconds())
    actor_type, prefix = rng.choice(TAKEOVER_ACTORS)
    fields.update(agentMode="human", takeoverActorId=f"{prefix}{rng.getrandbits(40):010x}",
                  takeoverActorType=actor_type, takeoverReason=rng.choice(TAKEOVER_REASONS),
                  takeoverAt=first + timedelta(seconds=rng.randint(1, span)))
    return fields


def _message_extras(rng: random.Random, message: dict) -> dict:
    """The vendor's metadata keys: delivery status (and error) of outbound messages, the
    channel's own timestamp of messages it knows, and attachments held elsewhere by URL."""
    extras = {}
    if message["direction"] == "outbound" or (message["role"] == "assistant"
                                             and message["direction"] is None):
        status = rng.choices([s for s, _ in DELIVERY], [w for _, w in DELIVERY])[0]
        extras["deliveryStatus"] = status
        if status in DELIVERY_ERRORS and rng.random() < 0.7:
            extras["deliveryError"] = rng.choice(DELIVERY_ERRORS[status])
    if message["externalMessageId"] is not None and rng.random() < 0.6:
        at = message["createdAt"] - timedelta(milliseconds=rng.randint(0, 5000))
        extras["externalTimestamp"] = at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    if rng.random() < ATTACHMENT_SHARE:
        extras["attachments"] = [_attachment(rng, message["id"])
                                 for _ in range(rng.randint(1, 3))]
    return extras


def _attachment(rng: random.Random, message_id: str) -> dict:
    pattern, content_type = rng.choice(ATTACHMENTS)
    name = pattern.format(n=rng.randint(1, 9999))
    return {"name": name, "size": rng.randint(200, 25_000_000), "contentType": content_type,
            "url": f"https://files.example.com/attachments/{message_id}/{quote(name)}"}
