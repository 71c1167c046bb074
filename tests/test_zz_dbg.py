from tests.test_abuse import *  # noqa
import worker.abuse as ab

def test_dbg(limited_rt, smtp, stub_worker):
    orig = ab.RedisSignupLimiter._take
    log = []
    def take(self, windows):
        v = orig(self, windows)
        log.append((time.time(), [w.reason for w in windows], v))
        return v
    ab.RedisSignupLimiter._take = take
    for n in range(40):
        actors.handle_signup.send(signup(n, "Stranger@Example.org", ip=f"198.51.100.{n}"))
    stub_worker.join()
    for l in log:
        if l[1][0] != "ip_limit": print(l)
    print(len(smtp.handler.received))
