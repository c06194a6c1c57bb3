import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  VirtioFeature,
  featureBit,
  featureBits,
  featureSet,
  featureWord,
  hasFeature,
  withFeatureWord,
} from '../../src/virtio/features.js';
import { DeviceStatus, describeStatus } from '../../src/virtio/status.js';

describe('feature bits', () => {
  test('VERSION_1 lives in the second 32-bit word', () => {
    const f = featureSet(VirtioFeature.VIRTIO_F_VERSION_1, VirtioFeature.VIRTIO_F_EVENT_IDX, 5);
    assert.equal(f, (1n << 32n) | (1n << 29n) | (1n << 5n));
    assert.equal(featureWord(f, 0), (1 << 29) + (1 << 5));
    assert.equal(featureWord(f, 1), 1);
    assert.deepEqual(featureBits(f), [5, 29, 32]);
    assert.ok(hasFeature(f, 32));
    assert.ok(!hasFeature(f, 28));
    assert.equal(featureBit(40), 1n << 40n);
  });

  test('withFeatureWord replaces one word', () => {
    let f = 0n;
    f = withFeatureWord(f, 1, 0x0000_0101);
    f = withFeatureWord(f, 0, 0xffff_ffff);
    assert.equal(f, 0x0000_0101_ffff_ffffn);
    f = withFeatureWord(f, 0, 0);
    assert.equal(f, 0x0000_0101_0000_0000n);
  });

  test('status rendering', () => {
    assert.equal(describeStatus(0), 'RESET');
    assert.equal(
      describeStatus(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK),
      'ACKNOWLEDGE|DRIVER|FEATURES_OK',
    );
    assert.equal(describeStatus(DeviceStatus.DEVICE_NEEDS_RESET | 0x10), 'DEVICE_NEEDS_RESET|0x10');
  });
});
