/**
 * Which AWS service and region an endpoint host name signs for: pure, so
 * that the policy checks (a SigV4 binding whose scope cannot be inferred
 * must name it) and the SigV4 signer (controller/inject/sigv4.ts) share it.
 */

/** A SigV4 signing name: letters, digits and '-'. */
export const SERVICE_NAME = /^[A-Za-z0-9-]+$/;

/**
 * The SigV4 service and region for an AWS endpoint host name, or undefined
 * when `host` is not an AWS endpoint this recognises (then the policy must
 * name them). Handles `service.region.amazonaws.com`, global endpoints
 * (`iam.amazonaws.com`, `sts.amazonaws.com`: us-east-1, or cn-north-1 in
 * China), FIPS endpoints, endpoint prefixes whose signing name differs
 * (`bedrock-runtime` signs as `bedrock`), S3 in path, virtual-hosted,
 * dual-stack, legacy `s3-region` and access-point forms, and `.amazonaws.com.cn`.
 * A port suffix and a trailing dot are ignored. Never throws.
 */
export function inferAwsScope(host: string): { service: string; region: string } | undefined {
  const name = normalHost(host);
  let partitionDefault: string;
  let rest: string;
  if (name.endsWith('.amazonaws.com')) {
    partitionDefault = 'us-east-1';
    rest = name.slice(0, -'.amazonaws.com'.length);
  } else if (name.endsWith('.amazonaws.com.cn')) {
    partitionDefault = 'cn-north-1';
    rest = name.slice(0, -'.amazonaws.com.cn'.length);
  } else {
    return undefined;
  }
  const labels = rest.split('.');
  if (labels.some((l) => l === '')) return undefined;

  let i = labels.length - 1;
  let region: string | undefined;
  if (isRegion(labels[i] as string)) {
    region = labels[i] as string;
    i--;
  }
  if (i >= 0 && labels[i] === 'dualstack') i--;
  if (i < 0) return undefined;
  const label = labels[i] as string;

  const s3 = S3_ENDPOINTS[label];
  if (s3) return { service: s3, region: region ?? partitionDefault };
  if (!region) {
    // Legacy S3 endpoints carry the region in the same label: s3-us-west-2.
    if (label === 's3-external-1') return { service: 's3', region: 'us-east-1' };
    const legacy = /^s3-(?:fips-)?(.+)$/.exec(label);
    if (legacy && isRegion(legacy[1] as string)) return { service: 's3', region: legacy[1] as string };
    // Anything else before a global service's label is not an endpoint we know.
    if (i !== 0) return undefined;
  }
  // Unlisted S3 forms (s3-accelerate, s3-website-*) have no knowable region or are not APIs.
  if (label.startsWith('s3-') || label.startsWith('s3express')) return undefined;

  // Endpoint prefixes may span labels (runtime.sagemaker): try the longest first.
  for (let n = Math.min(3, i + 1); n >= 1; n--) {
    const prefix = labels.slice(i - n + 1, i + 1).join('.');
    const signingName = SIGNING_NAMES[prefix.replace(/-fips$/, '')];
    if (signingName) return { service: signingName, region: region ?? GLOBAL_REGIONS[signingName] ?? partitionDefault };
  }
  const service = label.replace(/-fips$/, '');
  if (!SERVICE_NAME.test(service)) return undefined;
  return { service, region: region ?? GLOBAL_REGIONS[service] ?? partitionDefault };
}

/** Lower-case host name without a port or trailing dot. */
export function normalHost(host: string): string {
  let h = host.trim().toLowerCase();
  if (h.startsWith('[')) {
    const end = h.indexOf(']');
    h = end === -1 ? h : h.slice(0, end + 1);
  } else {
    h = h.replace(/:\d*$/, '');
  }
  return h.replace(/\.$/, '');
}

function isRegion(label: string): boolean {
  return /^[a-z]{2}(?:-[a-z]+)+-\d+$/.test(label);
}

/** S3 endpoint labels (the label left of the region) and the name they sign with. */
const S3_ENDPOINTS: Record<string, string> = {
  s3: 's3',
  's3-fips': 's3',
  's3-accesspoint': 's3',
  's3-accesspoint-fips': 's3',
  's3-control': 's3',
  's3-control-fips': 's3',
  's3-object-lambda': 's3-object-lambda',
};

/** Global services whose signing region is not the partition's first region. */
const GLOBAL_REGIONS: Record<string, string> = {
  globalaccelerator: 'us-west-2',
};

/**
 * Endpoint prefixes whose SigV4 signing name differs from the prefix, from
 * botocore 1.43.64's service models (metadata.endpointPrefix -> signingName),
 * plus the legacy SQS host `queue.amazonaws.com`.
 */
const SIGNING_NAMES: Record<string, string> = {
  'a2i-runtime.sagemaker': 'sagemaker',
  'admin.wickr': 'wickr',
  'agreement-marketplace': 'aws-marketplace',
  'api.detective': 'detective',
  'api.ecr': 'ecr',
  'api.ecr-public': 'ecr-public',
  'api.iotdeviceadvisor': 'iotdeviceadvisor',
  'api.iotmanagedintegrations': 'iotmanagedintegrations',
  'api.iotwireless': 'iotwireless',
  'api.mediatailor': 'mediatailor',
  'api.pricing': 'pricing',
  'api.sagemaker': 'sagemaker',
  'api.tunneling.iot': 'IoTSecuredTunneling',
  appconfigdata: 'appconfig',
  appstream2: 'appstream',
  'bedrock-agent': 'bedrock',
  'bedrock-agent-runtime': 'bedrock',
  'bedrock-agentcore-control': 'bedrock-agentcore',
  'bedrock-data-automation': 'bedrock',
  'bedrock-data-automation-runtime': 'bedrock',
  'bedrock-runtime': 'bedrock',
  'cassandra-streams': 'cassandra',
  'catalog.marketplace': 'aws-marketplace',
  cloudhsmv2: 'cloudhsm',
  cloudsearchdomain: 'cloudsearch',
  'contact-lens': 'connect',
  'controlplane.payment-cryptography': 'payment-cryptography',
  'data-ats.iot': 'iotdata',
  'data-signer': 'signer',
  'data.jobs.iot': 'iot-jobs-data',
  'data.mediastore': 'mediastore',
  'data.qapps': 'qapps',
  'dataplane.payment-cryptography': 'payment-cryptography',
  'deployment-marketplace': 'aws-marketplace',
  'discovery-marketplace': 'aws-marketplace',
  'edge.sagemaker': 'sagemaker',
  email: 'ses',
  'entitlement.marketplace': 'aws-marketplace',
  'featurestore-runtime.sagemaker': 'sagemaker',
  forecastquery: 'forecast',
  'identity-chime': 'chime',
  'ingest.timestream': 'timestream',
  ivsrealtime: 'ivs',
  'job-runtime.sagemaker': 'sagemaker',
  'mail-manager': 'ses',
  'media-pipelines-chime': 'chime',
  'meetings-chime': 'chime',
  'memory-db': 'memorydb',
  'messaging-chime': 'chime',
  'metering.marketplace': 'aws-marketplace',
  'metrics.sagemaker': 'sagemaker',
  'migrationhub-config': 'mgh',
  'models-v2-lex': 'lex',
  'models.lex': 'lex',
  oidc: 'sso-oauth',
  'participant.connect': 'execute-api',
  'partnercentral-prm': 'partnercentral',
  'personalize-events': 'personalize',
  'personalize-runtime': 'personalize',
  pinpoint: 'mobiletargeting',
  'portal.sso': 'awsssoportal',
  'query.timestream': 'timestream',
  queue: 'sqs',
  'reporting-marketplace': 'aws-marketplace',
  'runtime-v2-lex': 'lex',
  'runtime.lex': 'lex',
  'runtime.sagemaker': 'sagemaker',
  'servicecatalog-appregistry': 'servicecatalog',
  'sms-voice.pinpoint': 'sms-voice',
  'streams.dynamodb': 'dynamodb',
  'voice-chime': 'chime',
};
