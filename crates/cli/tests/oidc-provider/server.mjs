// A real OpenID provider for tresor's tests (panva/oidc-provider, OpenID Certified).
// Usage: PORT=9401 node server.mjs   -> prints "oidc-provider listening on <issuer>" when ready.
import Provider from 'oidc-provider';
import { generateKeyPairSync } from 'node:crypto';
import { readFileSync } from 'node:fs';

const PORT = Number(process.env.PORT || 9401);
const ISSUER = `http://127.0.0.1:${PORT}`;
const AUDIENCE = process.env.AUDIENCE || 'tes-api';

// A fresh RS256 signing key per run: nothing to keep, nothing to leak.
const jwk = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
jwk.kid = 'test-key-1'; jwk.alg = 'RS256'; jwk.use = 'sig';

// tresor's own outbound client authenticates with private_key_jwt: only the public half of the
// test key is registered here.
const outboundKey = JSON.parse(readFileSync(new URL('../it/fixtures/rsa-test-key.jwk.json', import.meta.url)));
const outboundPublic = { kty: 'RSA', n: outboundKey.n, e: outboundKey.e, kid: 'tresor-outbound', alg: 'RS256', use: 'sig' };

const provider = new Provider(ISSUER, {
  jwks: { keys: [jwk] },
  cookies: { keys: ['test-only-cookie-key'] },
  clients: [
    { client_id: 'tes-service', client_secret: 'tes-service-secret',
      grant_types: ['client_credentials'], redirect_uris: [], response_types: [],
      scope: 'tes:read tes:write' },
    { client_id: 'tresor-outbound', token_endpoint_auth_method: 'private_key_jwt',
      token_endpoint_auth_signing_alg: 'RS256', jwks: { keys: [outboundPublic] },
      grant_types: ['client_credentials'], redirect_uris: [], response_types: [], scope: 'tes:read' },
    { client_id: 'tresor-outbound-secret', client_secret: 'outbound-secret-value',
      token_endpoint_auth_method: 'client_secret_post',
      grant_types: ['client_credentials'], redirect_uris: [], response_types: [], scope: 'tes:read' },
  ],
  scopes: ['openid', 'tes:read', 'tes:write'],
  features: {
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => `urn:${AUDIENCE}`,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({ audience: AUDIENCE, scope: 'tes:read tes:write',
                                      accessTokenFormat: 'jwt', accessTokenTTL: 600 }),
    },
  },
});
provider.proxy = false;
provider.listen(PORT, '127.0.0.1', () => console.log(`oidc-provider listening on ${ISSUER}`));
