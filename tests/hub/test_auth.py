"""Every auth path (header, query, connect payload, anonymous on/off) and
every rejection of docs/auth.md, plus token expiry and refresh."""
import asyncio
import base64
import hashlib
import hmac
import json
import time

from conftest import (MULT, SECRET, SECRET384, Client, base_config, b64url, expect_error,
                      handshake_status, keypair, merge, raw_upgrade, run_async, token,
                      unsigned_token)


def hmac_token(secret, alg="HS256", sub="mallory", exp_in=3600):
    """An HMAC token made by hand (python-jwt refuses a PEM as an HMAC
    secret, which is exactly the HS/RS confusion attack)."""
    h = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    p = b64url(json.dumps({"sub": sub, "exp": int(time.time()) + exp_in}).encode())
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384}[alg]
    sig = hmac.new(secret, f"{h}.{p}".encode(), digest).digest()
    return f"{h}.{p}.{b64url(sig)}"


def tampered(tok):
    h, p, s = tok.split(".")
    claims = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
    claims["sub"] = "admin"
    return f"{h}.{b64url(json.dumps(claims).encode())}.{s}"


@run_async
async def test_token_in_header_query_and_connect_payload(hub):
    h = hub()
    for how, user in (("header", "hdr"), ("query", "qry"), ("payload", "pl")):
        c = await Client.open(h, token(user, info={"via": how}), how=how)
        assert c.info["user"] == user, (how, c.info)
        await c.subscribe("chat:auth")
        r = await c.cmd("presence", "chat:auth")
        mine = [e for e in r["payload"]["clients"] if e["client"] == c.info["client"]]
        assert mine == [{"user": user, "client": c.info["client"], "info": {"via": how}}], r
        await c.close()


@run_async
async def test_every_asymmetric_alg_with_pyjwt_tokens(hub):
    """RS384, RS512, PS256-512, ES384, ES512 and EdDSA (Ed25519 and Ed448),
    with tokens signed by PyJWT, an implementation that is not ours; each
    key accepts only its own algorithm."""
    _, rsa_pub = keypair("rsa")
    keys = [{"alg": "HS256", "secret": SECRET}]
    for alg in ("RS384", "RS512", "PS256", "PS384", "PS512"):
        keys.append({"alg": alg, "public_key_file": rsa_pub})
    keys += [{"alg": "ES384", "public_key_file": keypair("ec384")[1]},
             {"alg": "ES512", "public_key_file": keypair("ec521")[1]},
             {"alg": "EdDSA", "public_key_file": keypair("ed25519")[1], "kid": "ed25519"},
             {"alg": "EdDSA", "public_key_file": keypair("ed448")[1], "kid": "ed448"}]
    h = hub(merge(base_config(), {"auth": {"keys": keys}}))
    rsa_priv = keypair("rsa")[0]
    cases = [(alg, rsa_priv, None) for alg in ("RS384", "RS512", "PS256", "PS384", "PS512")]
    cases += [("ES384", keypair("ec384")[0], None), ("ES512", keypair("ec521")[0], None),
              ("EdDSA", keypair("ed25519")[0], {"kid": "ed25519"}),
              ("EdDSA", keypair("ed448")[0], None)]  # no kid: every EdDSA key is tried
    for alg, priv, headers in cases:
        c = await Client.open(h, token(f"u-{alg}", alg=alg, key=priv, headers=headers))
        assert c.info["user"] == f"u-{alg}", alg
        await c.close()
    # RS256 has no key here, though its RSA key signs the others: refused.
    assert handshake_status(h.port, headers=[
        ("Authorization", "Bearer " + token("x", alg="RS256", key=rsa_priv))]) == 403
    # An ES384 signature under an ES512 header: the wrong size for P-521.
    assert handshake_status(h.port, headers=[
        ("Authorization", "Bearer " + token("x", alg="ES384", key=keypair("ec384")[0],
                                            headers={"alg": "ES512"}))]) == 403
    # An Ed25519 token under the Ed448 key's kid: refused.
    assert handshake_status(h.port, headers=[
        ("Authorization", "Bearer " + token("x", alg="EdDSA", key=keypair("ed25519")[0],
                                            headers={"kid": "ed448"}))]) == 403


@run_async
async def test_rs256_and_es256_keys(hub):
    _, rsa_pub = keypair("rsa")
    _, ec_pub = keypair("ec")
    cfg = merge(base_config(), {"auth": {"keys": [
        {"alg": "HS256", "secret": SECRET},
        {"alg": "RS256", "public_key_file": rsa_pub, "kid": "rsa-1"},
        {"alg": "ES256", "public_key_file": ec_pub}]}})
    h = hub(cfg)
    rsa_priv, _ = keypair("rsa")
    ec_priv, _ = keypair("ec")
    c = await Client.open(h, token("rs", alg="RS256", key=rsa_priv, headers={"kid": "rsa-1"}))
    assert c.info["user"] == "rs"
    await c.close()
    c = await Client.open(h, token("es", alg="ES256", key=ec_priv), how="payload")
    assert c.info["user"] == "es"
    await c.close()
    # HS/RS confusion: HS256 keyed with the RSA public key's PEM text
    with open(rsa_pub, "rb") as f:
        pem = f.read()
    assert handshake_status(h.port, headers=[("Authorization", "Bearer " + hmac_token(pem))]) == 403
    c = await Client.open(h, None, how=None, connect=False)
    await c.send({"type": "connect", "id": 1, "payload": {"token": hmac_token(pem)}})
    code, _, seen = await c.expect_close()
    assert [m["payload"]["code"] for m in seen if m["type"] == "error"] == [2001], seen
    assert code == 4500, (code, seen)
    # unknown kid for RS256
    t = token("rs", alg="RS256", key=rsa_priv, headers={"kid": "nope"})
    assert handshake_status(h.port, headers=[("Authorization", "Bearer " + t)]) == 403


def bad_tokens():
    rsa_priv, _ = keypair("rsa")
    good = token("alice")
    return {
        "bad signature": tampered(good),
        "wrong secret": token("alice", key=SECRET + "x"),
        "HS384 against an HS256 key": token("alice", alg="HS384", key=SECRET384),
        "RS256 against an HS key": token("alice", alg="RS256", key=rsa_priv),
        "HS256 keyed with nothing": hmac_token(b""),
        "alg none": unsigned_token("alice"),
        "expired": token("alice", exp_in=-120),
        "no exp": token("alice", no_exp=True),
        "no sub": token(None),
        "garbage": "not.a.jwt",
    }


@run_async
async def test_rejections_at_the_handshake_are_403(hub):
    h = hub()
    for what, tok in bad_tokens().items():
        st = handshake_status(h.port, headers=[("Authorization", "Bearer " + tok)])
        assert st == 403, f"{what} in Authorization: HTTP {st}"
        st = handshake_status(h.port, path="/ws?token=" + tok)
        assert st == 403, f"{what} in ?token=: HTTP {st}"
    # An Authorization header that is not a Bearer token: 401 (LIMITS.md);
    # so is a token parameter that cannot be read as one (docs/auth.md).
    for value in ("Basic YWxpY2U6c2VjcmV0", "Bearer", "Bearer  two spaces", token("a")):
        assert handshake_status(h.port, headers=[("Authorization", value)]) == 401, value
    r, c = raw_upgrade(h.port, headers=[("Authorization", "Basic YWxpY2U6c2VjcmV0")])
    c.close()
    assert r.header("www-authenticate") == "Bearer", r  # RFC 9110 11.6.1
    good = token("a")
    for query in (f"token={good}&token={good}", "token=%zz", "token=abc%4", "token=a%00b"):
        assert handshake_status(h.port, path="/ws?" + query) == 401, query
    assert handshake_status(h.port, path=f"/ws?x=1&token={good}&y=%41") == 101
    # Two Authorization headers: a proxy and the server could read different
    # ones, so neither is (as `token` twice in the query).
    two = [("Authorization", "Bearer " + token("a")), ("Authorization", "Bearer " + token("b"))]
    assert handshake_status(h.port, headers=two) == 401
    # the good one passes both ways
    assert handshake_status(h.port, headers=[("Authorization", "Bearer " + token("a"))]) == 101
    assert handshake_status(h.port, path="/ws?token=" + token("a")) == 101


@run_async
async def test_rejections_in_connect_are_error_then_close(hub):
    h = hub()
    for what, tok in bad_tokens().items():
        c = await Client.open(h, None, how=None, connect=False)
        await c.send({"type": "connect", "id": 5, "payload": {"token": tok}})
        code, _, seen = await c.expect_close()
        errs = [m for m in seen if m["type"] == "error"]
        assert len(errs) == 1 and errs[0].get("id") == 5, (what, seen)
        want = (2002, 4100) if what == "expired" else (2001, 4500)
        assert (errs[0]["payload"]["code"], code) == want, (what, code, seen)
        disc = [m for m in seen if m["type"] == "disconnect"]
        assert disc and disc[0]["payload"]["code"] == code, (what, seen)
        assert disc[0]["payload"]["reconnect"] is (code == 4100), (what, disc)


@run_async
async def test_anonymous_on(hub):
    cfg = merge(base_config(), {"auth": {"allow_anonymous": True}})
    h = hub(cfg)
    a = await Client.open(h, None, how=None)
    # the brief: an anonymous user id is "anon-<client>" (docs/protocol.md says "")
    assert a.info["user"] == "anon-" + a.info["client"] and a.info["expires"] == 0, a.info
    await a.subscribe("chat:anon")
    assert await a.publish("chat:anon", {"hi": 1}) == 1
    m = await a.push("message", "chat:anon")
    assert m["from"] == a.info["user"]
    # anonymous clients never get a personal channel
    await expect_error(a, "subscribe", f"dm:inbox#{a.info['user']}", 2003)
    await expect_error(a, "subscribe", "dm:inbox#alice", 2003)
    # an anonymous session cannot become a user by refresh: it stays anonymous
    await expect_error(a, "refresh", None, 2001, payload={"token": token("bob")})
    assert await a.publish("chat:anon", {"hi": 2}) == 2
    m = await a.push("message", "chat:anon")
    assert m["from"] == a.info["user"], m
    # a token still works and still has to be valid
    b = await Client.open(h, token("bob"))
    assert b.info["user"] == "bob"
    c = await Client.open(h, None, how=None, connect=False)
    await c.send({"type": "connect", "id": 1, "payload": {"token": tampered(token("x"))}})
    code, _, seen = await c.expect_close()
    assert code == 4500 and [m["payload"]["code"] for m in seen if m["type"] == "error"] == [2001]
    await a.close()
    await b.close()


@run_async
async def test_anonymous_off(hub):
    h = hub()
    c = await Client.open(h, None, how=None, connect=False)
    await c.send({"type": "connect", "id": 1})
    code, _, seen = await c.expect_close()
    errs = [m for m in seen if m["type"] == "error"]
    assert errs and errs[0]["payload"]["code"] == 2000, seen
    # docs/auth.md: error 2000, then `disconnect` and close 4500 (terminal).
    assert code == 4500, (code, seen)
    disc = [m for m in seen if m["type"] == "disconnect"]
    assert len(disc) == 1 and disc[0]["payload"]["code"] == 4500, seen
    assert disc[0]["payload"]["reconnect"] is False, disc


@run_async
async def test_channels_claim_and_personal_channels(hub):
    h = hub()
    a = await Client.open(h, token("alice", channels=["chat:a*", "dm:*"]))
    await a.subscribe("chat:abc")
    await a.subscribe("chat:a")
    await expect_error(a, "subscribe", "chat:b", 2003)
    await expect_error(a, "subscribe", "lobby", 2003)
    await a.subscribe("dm:inbox#alice")
    # A channel for several users: each in the list, and no one else.
    await a.subscribe("dm:pair#alice,bob")
    bob = await Client.open(h, token("bob"))
    await bob.subscribe("dm:pair#alice,bob")
    await a.publish("dm:pair#alice,bob", {"text": "hi bob"})
    got = await bob.push("message", "dm:pair#alice,bob")
    assert got["payload"] == {"text": "hi bob"} and got["from"] == "alice", got
    await bob.close()
    mallory = await Client.open(h, token("mallory", channels=["*:*#*", "dm:*"]))
    await expect_error(mallory, "subscribe", "dm:pair#alice,bob", 2003)
    await mallory.close()
    for bad in ("dm:pair#alice,", "dm:pair#,alice", "dm:pair#alice,,bob"):
        r = await a.cmd("subscribe", bad)
        assert r["type"] == "error" and r["payload"]["code"] == 4000, (bad, r)
    await expect_error(a, "subscribe", "dm:inbox#bob", 2003)
    # no pattern opens another user's personal channel
    w = await Client.open(h, token("wild", channels=["*:*#*", "dm:*", "*"]))
    await expect_error(w, "subscribe", "dm:inbox#alice", 2003)
    await expect_error(w, "subscribe", "inbox#alice", 2003)
    # without a channels claim: any public channel, still not others' inboxes
    n = await Client.open(h, token("nina"))
    await n.subscribe("chat:anything")
    await n.subscribe("dm:inbox#nina")
    await expect_error(n, "subscribe", "dm:inbox#alice", 2003)
    # an empty channels claim: no public channel (only the user's own)
    z = await Client.open(h, token("zoe", channels=[]))
    await expect_error(z, "subscribe", "chat:anything", 2003)
    await z.subscribe("dm:inbox#zoe")
    for c in (a, w, n, z):
        await c.close()


@run_async
async def test_publish_claim(hub):
    h = hub()
    a = await Client.open(h, token("alice", publish=["chat:ok*"]))
    await a.subscribe("chat:ok1")
    await a.subscribe("chat:ro")
    assert await a.publish("chat:ok1", {"x": 1}) == 1
    await expect_error(a, "publish", "chat:ro", 2004, payload={"x": 1})
    r = await a.cmd("history", "chat:ro")
    assert r["payload"]["offset"] == 0 and r["payload"]["messages"] == [], r
    # personal channel: in the list AND a publish pattern must match
    b = await Client.open(h, token("bob", publish=["dm:*"]))
    await b.subscribe("dm:inbox#bob")
    assert await b.publish("dm:inbox#bob", {"dm": 1}) == 1
    c = await Client.open(h, token("carl", publish=["chat:*"]))
    await c.subscribe("dm:inbox#carl")
    await expect_error(c, "publish", "dm:inbox#carl", 2004, payload={"dm": 1})
    await c.close()
    # an empty publish claim: subscribe, never publish
    d = await Client.open(h, token("dora", publish=[]))
    await d.subscribe("chat:ok1")
    await expect_error(d, "publish", "chat:ok1", 2004, payload={"x": 1})
    await d.close()
    await a.close()
    await b.close()


@run_async
async def test_origin_allow_list(hub):
    cfg = merge(base_config(), {"origins": ["https://good.example", "http://localhost:8080"]})
    h = hub(cfg)
    auth = ("Authorization", "Bearer " + token("alice"))
    assert handshake_status(h.port, headers=[auth, ("Origin", "https://evil.example")]) == 403
    assert handshake_status(h.port, headers=[auth, ("Origin", "https://good.example.evil")]) == 403
    assert handshake_status(h.port, headers=[auth, ("Origin", "null")]) == 403
    assert handshake_status(h.port, headers=[auth, ("Origin", "https://good.example/")]) == 403
    # origin is checked first: even without credentials it is 403
    assert handshake_status(h.port, headers=[("Origin", "https://evil.example")]) == 403
    assert handshake_status(h.port, headers=[auth, ("Origin", "https://good.example")]) == 101
    assert handshake_status(h.port, headers=[auth, ("Origin", "https://GOOD.example:443")]) == 101
    assert handshake_status(h.port, headers=[auth, ("Origin", "http://localhost:8080")]) == 101
    assert handshake_status(h.port, headers=[auth]) == 101  # non-browser client
    c = await Client.open(h, token("alice"), origin="https://good.example")
    await c.close()


def test_origin_allow_list_guards_raw_and_echo_too(hub):
    """/raw takes no token, so the Origin check is all that keeps a page
    of another site from reading and writing its channels (cross-site
    WebSocket hijacking); /echo the same. --no-raw turns /raw off."""
    cfg = merge(base_config(), {"origins": ["https://good.example"]})
    h = hub(cfg, "--echo")
    for path in ("/raw/room", "/echo"):
        assert handshake_status(h.port, path, [("Origin", "https://evil.example")]) == 403, path
        assert handshake_status(h.port, path, [("Origin", "null")]) == 403, path
        assert handshake_status(h.port, path, [("Origin", "https://good.example")]) == 101, path
        assert handshake_status(h.port, path) == 101, path  # not a browser
    r, c = raw_upgrade(h.port, "/raw/room", [("Origin", "https://evil.example")])
    c.close()
    assert r.status == 403 and b"origin not allowed" in r.body, r
    # Without a list every Origin passes (docs/config.md, origins).
    open_hub = hub(base_config(), "--echo")
    for path in ("/raw/room", "/echo"):
        assert handshake_status(open_hub.port, path, [("Origin", "https://any.example")]) == 101
    off = hub(cfg, "--no-raw")
    assert handshake_status(off.port, "/raw/room") == 404
    assert handshake_status(off.port, "/raw/room", [("Origin", "https://good.example")]) == 404
    assert "raw=0" in off.log() and "raw=1" in h.log()


@run_async
async def test_expiry_sends_refresh_required_then_closes_4100(hub):
    """docs/protocol.md: refresh_required "is sent before the token
    expires. If no successful refresh arrives by expires, the connection is
    closed with 4100", with `disconnect` first."""
    h = hub()
    exp = int(time.time()) + 3
    c = await Client.open(h, token("alice", exp_in=3))
    assert c.info["expires"] == exp or abs(c.info["expires"] - exp) <= 1
    await c.subscribe("chat:exp")
    t0 = time.monotonic()
    code, reason, seen = await c.expect_close(timeout=15)
    took = time.monotonic() - t0
    kinds = [m["type"] for m in seen]
    assert code == 4100, (code, reason, seen)
    # at exp + the 5 s leeway verification allows: exp has whole seconds
    assert 6 <= took < 11, f"closed {took:.1f}s after connect for a token 3 s from expiry"
    disc = [m for m in seen if m["type"] == "disconnect"]
    assert disc and disc[0]["payload"]["code"] == 4100 and disc[0]["payload"]["reconnect"] is True
    assert "refresh_required" in kinds, f"no refresh_required before the 4100 close: {seen}"
    rr = seen[kinds.index("refresh_required")]
    assert rr["payload"] == {"expires": c.info["expires"]}, rr
    assert kinds.index("refresh_required") < kinds.index("disconnect"), seen


@run_async
async def test_refresh_required_comes_30_s_before_expiry(hub):
    """docs/protocol.md: refresh_required is sent 30 s before the token
    expires, not at once: a token 33 s from expiry hears of it after
    about 3 s (exp has whole seconds), and the connection stays."""
    h = hub()
    t0 = time.monotonic()
    c = await Client.open(h, token("alice", exp_in=33))
    rr = await c.push("refresh_required", timeout=8)  # (times MULT)
    took = time.monotonic() - t0
    assert 1.5 <= took < 8 * MULT, took
    assert rr["payload"] == {"expires": c.info["expires"]}, rr
    assert c.info["expires"] - time.time() > 25, (c.info, time.time())
    await c.subscribe("chat:still-open")
    await c.close()


@run_async
async def test_refresh_keeps_the_connection(hub):
    h = hub()
    c = await Client.open(h, token("alice", exp_in=2), how="payload")
    await c.subscribe("chat:rf")
    # a bad, an expired and another user's token are refused; the connection stays
    await expect_error(c, "refresh", None, 2001, payload={"token": tampered(token("alice"))})
    await expect_error(c, "refresh", None, 2002, payload={"token": token("alice", exp_in=-120)})
    await expect_error(c, "refresh", None, 2001, payload={"token": token("mallory")})
    await expect_error(c, "refresh", None, 1002, payload={})
    new_exp = int(time.time()) + 3600
    r = await c.cmd("refresh", payload={"token": token("alice", exp_in=3600)})
    assert r["type"] == "refreshed" and abs(r["payload"]["expires"] - new_exp) <= 1, r
    await asyncio.sleep(3.5)  # past the old exp
    assert await c.publish("chat:rf", {"still": "here"}) == 1
    await c.quiet(0.2, lambda m: m["type"] in ("disconnect",))
    await c.close()


@run_async
async def test_issuer_and_audience_are_required_when_configured(hub):
    """auth.issuer and auth.audience (docs/auth.md): a key set an identity
    provider shares among its applications signs tokens for all of them;
    only those whose `iss` is the issuer and whose `aud` names this
    audience get in."""
    h = hub(merge(base_config(), {"auth": {"issuer": "https://idp.example", "audience": "wshub"}}),
            "--log-level", "debug")
    iss = "https://idp.example"
    h.alive_token = lambda: token("__alive__", iss=iss, aud="wshub")  # for the check at the end
    ok = [token("a", iss=iss, aud="wshub"), token("a", iss=iss, aud=["chat", "wshub"])]
    for t in ok:
        assert handshake_status(h.port, headers=[("Authorization", "Bearer " + t)]) == 101
    refused = {"token_wrong_audience": [token("a", iss=iss, aud="some-other-app"),
                                        token("a", iss=iss)],
               "token_wrong_issuer": [token("a", iss="https://evil.example", aud="wshub"),
                                      token("a", aud="wshub")]}
    for reason, toks in refused.items():
        for t in toks:
            assert handshake_status(h.port, headers=[("Authorization", "Bearer " + t)]) == 403
        assert reason in h.log(), h.log()[-2000:]
    # In `connect` too: 2001 and close 4500.
    c = await Client.open(h, None, how=None, connect=False)
    await c.send({"type": "connect", "id": 5, "payload": {"token": token("a", iss=iss, aud="x")}})
    code, _, seen = await c.expect_close()
    errs = [m for m in seen if m["type"] == "error"]
    assert code == 4500 and errs and errs[0]["payload"]["code"] == 2001, (code, seen)


@run_async
async def test_a_refresh_that_narrows_channels_ends_those_subscriptions(hub):
    """docs/auth.md: the channels a refreshed token no longer allows are left
    at once, told by an `unsubscribed` push without id (and a `leave` to the
    others); the rest go on. The issuer can take a user out of a room
    without waiting for a reconnect."""
    h = hub()
    a = await Client.open(h, token("alice", channels=["chat:*"]))
    await a.subscribe("chat:secret")
    await a.subscribe("chat:pub")
    bob = await Client.open(h, token("bob"))
    await bob.subscribe("chat:secret")
    await bob.subscribe("chat:pub")
    r = await a.cmd("refresh", payload={"token": token("alice", channels=["chat:pub"])})
    assert r["type"] == "refreshed", r
    u = await a.push("unsubscribed", "chat:secret")
    assert "id" not in u, u
    leave = await bob.push("leave", "chat:secret")
    assert leave["payload"]["user"] == "alice", leave
    await bob.publish("chat:secret", {"n": 1})
    await bob.publish("chat:pub", {"n": 2})
    m = await a.push("message")
    assert m["channel"] == "chat:pub" and m["payload"] == {"n": 2}, m
    await a.quiet(0.3, lambda m: m["type"] == "message")
    await expect_error(a, "subscribe", "chat:secret", 2003)
    # A refresh that keeps them all ends none.
    r = await a.cmd("refresh", payload={"token": token("alice", channels=["chat:pub"])})
    assert r["type"] == "refreshed", r
    await a.quiet(0.3, lambda m: m["type"] == "unsubscribed")
    await a.close()
    await bob.close()


@run_async
async def test_a_token_taken_within_the_leeway_has_time_to_refresh(hub):
    """A token a little past its exp is still taken (the 5 s leeway,
    docs/auth.md); the session is then asked to refresh, and is not closed
    before the leeway is over, so the refresh can come (it was closed with
    4100 a moment after `connected`)."""
    h = hub()
    c = await Client.open(h, token("alice", exp_in=-2))
    rr = await c.push("refresh_required")
    assert rr["payload"]["expires"] <= time.time(), rr
    # At least 2 s to refresh in (exp is whole seconds): the refresh, sent
    # at once, comes back refreshed, not after a 4100.
    r = await c.cmd("refresh", payload={"token": token("alice", exp_in=3600)})
    assert r["type"] == "refreshed", r
    await c.subscribe("chat:in-time")
    await c.close()
