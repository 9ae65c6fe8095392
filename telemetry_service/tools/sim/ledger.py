"""
The simulated network's money: each node's account with each peer, the settlements that
pay them down, and the EVM and XRP payment channels the settlements go over, sent as the
real connector sends them (C{ACCOUNT_BALANCE}, C{SETTLEMENT_*}, C{PAYMENT_CHANNEL_*},
C{XRP_CHANNEL_*}). The addresses and channel ids are made up, stable for a node.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any

from telemetry_service.tools.sim.chatter import LogWriter, Send
from telemetry_service.tools.sim.topology import Topology
from telemetry_service.vocabulary import iso_millis

#: the asset every simulated peer account is kept in (amounts in its smallest unit)
TOKEN = "USDC"
#: settle with a peer once we owe it this much (5 USDC, 6 decimals): at the default rate
#: about five settlements a minute across a five-node line
DEFAULT_SETTLEMENT_THRESHOLD = 5_000_000
#: seconds from SETTLEMENT_TRIGGERED to SETTLEMENT_COMPLETED (on average; +-25%)
DEFAULT_SETTLEMENT_SECONDS = 2.0
#: share of settlements that fail (and are retried later)
SETTLEMENT_FAILURE = 0.1
#: an account's ACCOUNT_BALANCE goes out after this many packets changed it
BALANCE_EVERY = 3
#: why a failed settlement failed, as the real connector words it
SETTLEMENT_ERRORS = (
    "TigerBeetle transfer failed: insufficient balance",
    "EVM transaction reverted: nonce too low",
    "RPC request timed out after 30000 ms",
)
#: the XRP Ledger's base58 alphabet
_XRP_ALPHABET = "rpshnaf39wBUDNEGHJKLM4PQRST7VWXYZ2bcdeCg65jkm8oFqi1tuvAxyz"


def _digest(*parts: object) -> bytes:
    """A stable made-up value: the SHA-256 of C{parts}."""
    return hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()


def evm_address(node: str) -> str:
    """A node's (made-up, stable) EVM account."""
    return "0x" + _digest("evm", node).hex()[:40]


def xrp_address(node: str) -> str:
    """A node's (made-up, stable) XRP Ledger account, in the ledger's base58 alphabet."""
    return "r" + "".join(_XRP_ALPHABET[b % 58] for b in _digest("xrp", node)[:32])


def _short(channel_id: str) -> str:
    """A channel id as a log line shows it."""
    return f"{channel_id[:10]}..."


@dataclass
class _Debt:
    """What one node owes one peer, and where that node's settlement of it stands."""

    owed: int
    state: str = "IDLE"
    retry_at: float = 0.0
    pending: Any = None  # the DelayedCall of the settlement's next step


@dataclass
class _Channel:
    """An EVM payment channel, as its owner (the opener) sees it."""

    channel_id: str
    owner: str
    peer: str
    deposit: int
    my_nonce: int = 0
    their_nonce: int = 0
    my_transferred: int = 0
    their_transferred: int = 0


@dataclass
class _XrpChannel:
    """An XRP payment channel: what its owner put in, and what its peer has claimed."""

    channel_id: str
    owner: str
    peer: str
    amount: int
    claimed: int = 0


class Ledger:
    """
    The peer accounts of every node and how they settle.

    Each pair of peers has two debts: what each owes the other for the packets it forwarded
    to it. A node's account with a peer (C{ACCOUNT_BALANCE}) shows both: the peer's debt as
    C{debitBalance}, its own as C{creditBalance}. When a node owes a peer its settlement
    threshold it settles: C{SETTLEMENT_TRIGGERED}, then (after C{settlement_seconds})
    C{SETTLEMENT_COMPLETED}, which sometimes fails and is retried later. Each link has an EVM
    payment channel, opened and owned by the link's first node, whose balance proofs
    (C{PAYMENT_CHANNEL_BALANCE_UPDATE}) follow the settlements both ways; a channel that
    cannot carry the next settlement is settled (C{PAYMENT_CHANNEL_SETTLED}) and a new one
    opened. The first node pays its first peer over an XRP channel instead
    (C{XRP_CHANNEL_OPENED}, C{XRP_CHANNEL_CLAIMED}, C{XRP_CHANNEL_CLOSED} when spent).

    Everything it keeps is bounded by the topology: two debts and one channel per link.
    """

    def __init__(
        self,
        send: Send,
        clock: Any,
        rng: random.Random,
        topology: Topology,
        logs: LogWriter,
        threshold: int = DEFAULT_SETTLEMENT_THRESHOLD,
        settlement_seconds: float = DEFAULT_SETTLEMENT_SECONDS,
    ) -> None:
        if threshold < 1:
            raise ValueError("the settlement threshold must be at least 1")
        self._send = send
        self._clock = clock
        self._random = rng
        self._logs = logs
        self.topology = topology
        self.threshold = threshold
        self.settlement_seconds = settlement_seconds
        self.credit_limit = 3 * threshold
        nodes = topology.nodes
        order = {n: i for i, n in enumerate(nodes)}
        #: (owner, peer) of every link, the owner being the node listed first
        self.links = [(a, b) for a in nodes for b in topology.peers[a] if order[a] < order[b]]
        self.debts = {
            (a, b): _Debt(rng.randrange(threshold)) for a in nodes for b in topology.peers[a]
        }
        self.channels: dict[tuple[str, str], _Channel] = {}
        self.xrp: _XrpChannel | None = None
        #: the debt the first node settles over XRP
        self.xrp_debt = (nodes[0], topology.peers[nodes[0]][0])
        self._started = False
        self._updates: dict[tuple[str, str], int] = {}
        self._dirty: dict[tuple[str, str], None] = {}
        self._due: dict[tuple[str, str], None] = {}

    # -- what the simulation tells it

    def forwarded(self, node: str, peer: str, amount: int) -> None:
        """C{node} forwarded a packet of C{amount} to C{peer}, who fulfilled it."""
        debt = self.debts.get((node, peer))
        if debt is None:
            return
        debt.owed += amount
        for account in ((node, peer), (peer, node)):
            count = self._updates.get(account, 0) + 1
            if count >= BALANCE_EVERY:
                count = 0
                self._dirty[account] = None
            self._updates[account] = count
        if debt.owed >= self.threshold and debt.state == "IDLE":
            self._due[(node, peer)] = None

    def tick(self) -> None:
        """
        Send what is due: at the first tick the channels and balances of the start-up,
        then the balances that changed and the settlements that became due.
        """
        if not self._started:
            self._started = True
            self._open()
        dirty, self._dirty = self._dirty, {}
        for node, peer in dirty:
            self._balance(node, peer)
        due, self._due = self._due, {}
        now = self._clock.seconds()
        for payer, payee in due:
            debt = self.debts[(payer, payee)]
            if debt.state == "IDLE" and debt.owed >= self.threshold and now >= debt.retry_at:
                self._trigger(payer, payee)

    def stop(self) -> None:
        """Drop the settlements still under way: nothing more is sent."""
        for debt in self.debts.values():
            if debt.pending is not None and debt.pending.active():
                debt.pending.cancel()
            debt.pending = None

    # -- events

    def _flat(self, node: str, kind: str, **fields: Any) -> None:
        # the connector's flat events: every field at the top level, no data
        stamp = iso_millis(self._clock.seconds())
        self._send(node, {"type": kind, "nodeId": node, **fields, "timestamp": stamp})

    def _balance(self, node: str, peer: str) -> None:
        self._updates[(node, peer)] = 0
        self._dirty.pop((node, peer), None)
        debit, credit = self.debts[(peer, node)], self.debts[(node, peer)]
        self._flat(
            node,
            "ACCOUNT_BALANCE",
            peerId=peer,
            tokenId=TOKEN,
            debitBalance=str(debit.owed),
            creditBalance=str(credit.owed),
            netBalance=str(debit.owed - credit.owed),
            creditLimit=str(self.credit_limit),
            settlementThreshold=str(self.threshold),
            settlementState=credit.state,
        )

    def _open(self) -> None:
        """At start-up: a channel on every link, and every account's balance."""
        for owner, peer in self.links:
            self._open_channel(owner, peer, 3 * self.threshold)
        self._open_xrp(20 * self.threshold)
        for node, peer in self.debts:
            self._balance(node, peer)

    def _open_channel(self, owner: str, peer: str, deposit: int) -> _Channel:
        salt = self._random.getrandbits(64)
        channel = _Channel("0x" + _digest("channel", owner, peer, salt).hex(), owner, peer, deposit)
        self.channels[(owner, peer)] = channel
        mine, theirs = evm_address(owner), evm_address(peer)
        self._flat(
            owner,
            "PAYMENT_CHANNEL_OPENED",
            channelId=channel.channel_id,
            participants=[mine, theirs],
            peerId=peer,
            tokenAddress=evm_address(f"token:{TOKEN}"),
            tokenSymbol=TOKEN,
            settlementTimeout=86400,
            initialDeposits={mine: str(deposit), theirs: str(deposit)},
        )
        self._logs.log(
            owner,
            "info",
            f"Payment channel {_short(channel.channel_id)} opened with peer {peer}",
            {"channelId": channel.channel_id, "peerId": peer, "deposit": str(deposit)},
        )
        return channel

    def _open_xrp(self, amount: int) -> _XrpChannel:
        owner, peer = self.xrp_debt
        salt = self._random.getrandbits(64)
        channel = _XrpChannel(
            _digest("xrp-channel", owner, peer, salt).hex().upper(), owner, peer, amount
        )
        self.xrp = channel
        self._flat(
            owner,
            "XRP_CHANNEL_OPENED",
            channelId=channel.channel_id,
            account=xrp_address(owner),
            destination=xrp_address(peer),
            amount=str(amount),
            settleDelay=86400,
            publicKey="ED" + _digest("xrp-key", owner).hex().upper(),
            peerId=peer,
        )
        self._logs.log(
            owner,
            "info",
            f"XRP payment channel {_short(channel.channel_id)} opened with peer {peer}",
            {"channelId": channel.channel_id, "peerId": peer, "amount": str(amount)},
        )
        return channel

    # -- a settlement, step by step

    def _delay(self) -> float:
        return self.settlement_seconds * self._random.uniform(0.75, 1.25)

    def _trigger(self, payer: str, payee: str) -> None:
        debt = self.debts[(payer, payee)]
        amount = debt.owed
        debt.state = "SETTLEMENT_PENDING"
        self._flat(
            payer,
            "SETTLEMENT_TRIGGERED",
            peerId=payee,
            tokenId=TOKEN,
            currentBalance=str(amount),
            threshold=str(self.threshold),
            exceedsBy=str(amount - self.threshold),
            triggerReason="THRESHOLD_EXCEEDED",
        )
        self._balance(payer, payee)
        self._logs.log(
            payer,
            "info",
            f"Settlement threshold reached for peer {payee}",
            {"peerId": payee, "tokenId": TOKEN, "balance": str(amount)},
        )
        total = self._delay()
        debt.pending = self._clock.callLater(
            total / 4, self._in_progress, payer, payee, amount, total * 3 / 4
        )

    def _in_progress(self, payer: str, payee: str, amount: int, remaining: float) -> None:
        debt = self.debts[(payer, payee)]
        debt.state = "SETTLEMENT_IN_PROGRESS"
        self._balance(payer, payee)
        method = self._method(payer, payee)
        self._logs.log(
            payer,
            "debug",
            f"Submitting {method} settlement of {amount} {TOKEN} to peer {payee}",
            {"peerId": payee, "amount": str(amount), "method": method},
        )
        debt.pending = self._clock.callLater(remaining, self._complete, payer, payee, amount)

    def _method(self, payer: str, payee: str) -> str:
        return "XRP" if (payer, payee) == self.xrp_debt else "EVM"

    def _complete(self, payer: str, payee: str, amount: int) -> None:
        debt = self.debts[(payer, payee)]
        debt.pending = None
        method = self._method(payer, payee)
        previous = debt.owed
        success = self._random.random() >= SETTLEMENT_FAILURE
        fields: dict[str, Any] = {}
        if success:
            debt.owed -= amount
        else:
            amount = 0
            fields["errorMessage"] = self._random.choice(SETTLEMENT_ERRORS)
            debt.retry_at = self._clock.seconds() + 5 * self.settlement_seconds
        debt.state = "IDLE"
        self._flat(
            payer,
            "SETTLEMENT_COMPLETED",
            peerId=payee,
            tokenId=TOKEN,
            previousBalance=str(previous),
            newBalance=str(debt.owed),
            settledAmount=str(amount),
            settlementType=method,
            success=success,
            **fields,
        )
        self._balance(payer, payee)
        self._balance(payee, payer)
        if not success:
            self._logs.log(
                payer,
                "error",
                f"Settlement with peer {payee} failed: {fields['errorMessage']}",
                {"peerId": payee, "tokenId": TOKEN, "balance": str(previous)},
            )
            return
        if method == "XRP":
            channel_id = self._claim_xrp(amount)
        else:
            channel_id = self._transfer(payer, payee, amount)
        self._logs.log(
            payer,
            "info",
            f"Settlement completed with peer {payee}: {amount} {TOKEN} over {method}",
            {"peerId": payee, "amount": str(amount), "channelId": channel_id},
        )
        if debt.owed >= self.threshold:
            self._due[(payer, payee)] = None

    def _transfer(self, payer: str, payee: str, amount: int) -> str:
        """A balance proof for C{amount} from C{payer} on the link's channel."""
        owner, peer = (payer, payee) if (payer, payee) in self.channels else (payee, payer)
        channel = self.channels[(owner, peer)]
        sent = channel.my_transferred if payer == owner else channel.their_transferred
        if sent + amount > channel.deposit:
            # spent: settle it on-chain and open the next one
            self._flat(
                owner,
                "PAYMENT_CHANNEL_SETTLED",
                channelId=channel.channel_id,
                finalBalances={
                    evm_address(owner): str(
                        channel.deposit - channel.my_transferred + channel.their_transferred
                    ),
                    evm_address(peer): str(
                        channel.deposit - channel.their_transferred + channel.my_transferred
                    ),
                },
                settlementType="cooperative",
            )
            self._logs.log(
                owner,
                "info",
                f"Payment channel {_short(channel.channel_id)} with peer {peer} settled",
                {"channelId": channel.channel_id, "peerId": peer},
            )
            channel = self._open_channel(owner, peer, max(3 * self.threshold, 2 * amount))
        if payer == owner:
            channel.my_nonce += 1
            channel.my_transferred += amount
        else:
            channel.their_nonce += 1
            channel.their_transferred += amount
        self._flat(
            owner,
            "PAYMENT_CHANNEL_BALANCE_UPDATE",
            channelId=channel.channel_id,
            myNonce=channel.my_nonce,
            theirNonce=channel.their_nonce,
            myTransferred=str(channel.my_transferred),
            theirTransferred=str(channel.their_transferred),
        )
        return channel.channel_id

    def _claim_xrp(self, amount: int) -> str:
        channel = self.xrp
        assert channel is not None
        if channel.claimed + amount > channel.amount:
            self._flat(
                channel.owner,
                "XRP_CHANNEL_CLOSED",
                channelId=channel.channel_id,
                finalBalance=str(channel.claimed),
                closeType="cooperative",
                peerId=channel.peer,
            )
            channel = self._open_xrp(max(20 * self.threshold, 2 * amount))
        channel.claimed += amount
        self._flat(
            channel.owner,
            "XRP_CHANNEL_CLAIMED",
            channelId=channel.channel_id,
            claimAmount=str(channel.claimed),
            remainingBalance=str(channel.amount - channel.claimed),
            peerId=channel.peer,
        )
        return channel.channel_id
