import { fail } from '../errors.js';
import { asArray, asObject, typeOf } from './json.js';

/** A normalizer, or undefined for none (the DeepSeek files have none or an empty Sequence). */
export type Normalizer = ((text: string) => string) | undefined;

const UNICODE_FORMS = new Set(['NFC', 'NFD', 'NFKC', 'NFKD']);

export function buildNormalizer(json: unknown, file: string, where = `${file} normalizer`): Normalizer {
  if (json === null || json === undefined) return undefined;
  const o = asObject(json, where);
  const type = typeOf(o, where);
  if (type === 'Sequence') {
    const steps = asArray(o['normalizers'], `${where}.normalizers`)
      .map((n, i) => buildNormalizer(n, file, `${where}.normalizers[${i}]`))
      .filter((n): n is (text: string) => string => n !== undefined);
    if (steps.length === 0) return undefined;
    return (text) => steps.reduce((t, step) => step(t), text);
  }
  if (UNICODE_FORMS.has(type)) return (text) => text.normalize(type);
  return fail(`${where}: normalizer type ${JSON.stringify(type)} is not supported (supported: Sequence, NFC, NFD, NFKC, NFKD)`);
}
