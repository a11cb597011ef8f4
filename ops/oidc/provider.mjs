// A real OpenID Provider for orderd's integration tests: the `oidc-provider` package (pinned in
// package-lock.json, installed by ops/test), on 127.0.0.1 and a free port.
//
// Prints one JSON line on stdout once it listens: {"issuer": "http://127.0.0.1:PORT"}.
//
// Environment:
//   OIDC_AUDIENCE   the resource indicator / `aud` of access tokens (an absolute URI; default "urn:orderd")
//   OIDC_USERS      JSON: login -> extra access-token claims, e.g.
//                   {"acme-alice": {"account_id": "ACME", "roles": ["buyer"]}}
//                   (the dev login form accepts any login; `sub` is the login)
//   OIDC_CLIENTS    JSON: [{client_id, client_secret, redirect_uris, refresh}] for the code flow;
//                   a client with "refresh": true also gets refresh tokens (rotated at each use)
//   OIDC_TOKEN_TTL  access-token lifetime in seconds (default 600)
//
// Test-only endpoints (not part of OpenID Connect; they exist so tests can exercise orderd):
//   POST /_test/rotate        new signing key first in the JWKS, the old one kept after it;
//                             body {"drop_old": true} publishes only the new key
//   POST /_test/jwks          body {"down": true|false}: the JWKS endpoint answers 503 while down
//   POST /_test/sign          body {"header": {...}, "payload": {...}, "key": "current"|"stranger"}:
//                             a JWS signed with the provider's current key or a key it never published
//   GET  /_test/stats         {"jwks_requests": N, "refreshes": N (refresh grants that succeeded)}
//   POST /_test/clients       body [{client_id, client_secret, redirect_uris, refresh}]: replaces the clients
//   POST /_test/disable       body {"login": L, "disabled": true|false}: a disabled login has no
//                             account, so refreshing its tokens fails with invalid_grant
import http from 'node:http';
import crypto from 'node:crypto';
import Provider from 'oidc-provider';
import { CompactSign, importJWK } from 'jose';

const audience = process.env.OIDC_AUDIENCE || 'urn:orderd';
const users = JSON.parse(process.env.OIDC_USERS || '{}');
let clients = JSON.parse(process.env.OIDC_CLIENTS || '[]');
const tokenTtl = Number(process.env.OIDC_TOKEN_TTL || '600');

function newKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: crypto.randomUUID(), alg: 'RS256', use: 'sig' };
}

let keys = [newKey()];
const stranger = newKey();
let jwksDown = false;
let jwksRequests = 0;
let refreshes = 0;
const disabled = new Set();
let provider;
let issuer;

function clientConfig(c) {
  return {
    client_id: c.client_id,
    client_secret: c.client_secret,
    redirect_uris: c.redirect_uris,
    grant_types: c.refresh ? ['authorization_code', 'refresh_token'] : ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  };
}

function build() {
  const p = new Provider(issuer, {
    jwks: { keys },
    clients: clients.map(clientConfig),
    pkce: { required: () => true },
    findAccount: async (_ctx, id) => (disabled.has(id)
      ? undefined
      : { accountId: id, claims: async () => ({ sub: id }) }),
    // Refresh tokens for every client allowed the grant, without asking for offline_access.
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    rotateRefreshToken: true,
    extraTokenClaims: async (_ctx, token) => users[token.accountId] || undefined,
    ttl: { AccessToken: tokenTtl, IdToken: tokenTtl },
    features: {
      devInteractions: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => audience,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (_ctx, indicator) => {
          if (indicator !== audience) throw new Provider.errors.InvalidTarget();
          return {
            scope: 'orders',
            audience,
            accessTokenFormat: 'jwt',
            accessTokenTTL: tokenTtl,
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
  });
  p.proxy = false;
  p.on('grant.success', (ctx) => {
    if (ctx.oidc.params.grant_type === 'refresh_token') refreshes += 1;
  });
  return p;
}

async function readJson(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  const text = Buffer.concat(chunks).toString('utf8');
  return text ? JSON.parse(text) : {};
}

function reply(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

async function testEndpoint(req, res, path) {
  if (req.method === 'GET' && path === '/_test/stats') {
    return reply(res, 200, { jwks_requests: jwksRequests, refreshes });
  }
  const body = await readJson(req);
  switch (path) {
    case '/_test/rotate':
      keys = body.drop_old ? [newKey()] : [newKey(), ...keys];
      provider = build();
      return reply(res, 200, { kid: keys[0].kid });
    case '/_test/jwks':
      jwksDown = !!body.down;
      return reply(res, 200, { down: jwksDown });
    case '/_test/disable':
      if (body.disabled) disabled.add(body.login); else disabled.delete(body.login);
      return reply(res, 200, {});
    case '/_test/clients':
      clients = body;
      provider = build();
      return reply(res, 200, {});
    case '/_test/sign': {
      const jwk = body.key === 'stranger' ? stranger : keys[0];
      const header = { alg: 'RS256', kid: jwk.kid, ...body.header };
      const key = await importJWK(jwk, 'RS256');
      const jws = await new CompactSign(Buffer.from(JSON.stringify(body.payload)))
        .setProtectedHeader(header)
        .sign(key);
      return reply(res, 200, { token: jws, kid: jwk.kid });
    }
    default:
      return reply(res, 404, { error: 'no such test endpoint' });
  }
}

const server = http.createServer((req, res) => {
  const path = new URL(req.url, 'http://x').pathname;
  if (path.startsWith('/_test/')) {
    testEndpoint(req, res, path).catch((e) => reply(res, 500, { error: String(e) }));
    return;
  }
  if (path === '/jwks') {
    jwksRequests += 1;
    if (jwksDown) return reply(res, 503, { error: 'down for the test' });
  }
  provider.callback()(req, res);
});

server.listen(0, '127.0.0.1', () => {
  issuer = `http://127.0.0.1:${server.address().port}`;
  provider = build();
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});

// The test suite closes stdin (or dies): stop with it, never linger.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
