// Stop strings in streamed text: found across pieces, the earliest of overlapping ones wins, held text comes back.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { StopMatcher } from '../host/generate/stop.js';

/** What each push returned, then what end() returned, and whether a stop string was found. */
function run(stops: string[], pieces: string[]): { out: string[]; end: string; stopped: boolean } {
  const m = new StopMatcher(stops);
  const out = pieces.map((p) => m.push(p));
  return { out, end: m.end(), stopped: m.stopped };
}

test('a stop string inside one piece cuts the text before it', () => {
  assert.equal(run(['STOP'], ['hello STOP world']), { out: ['hello '], end: '', stopped: true });
});

test('a stop string spanning pieces is held back and never emitted', () => {
  assert.equal(run(['</s>'], ['abc<', '/', 's>tail', 'more']), { out: ['abc', '', '', ''], end: '', stopped: true });
  assert.equal(run(['\n\nUser:'], ['Sure.\n', '\nUs', 'er: hi']), { out: ['Sure.', '', ''], end: '', stopped: true });
});

test('held-back text is released once it turns out not to be a stop string', () => {
  assert.equal(run(['</s>'], ['a<', 'b']), { out: ['a', '<b'], end: '', stopped: false });
  assert.equal(run(['</s>'], ['a</', 's', 'x']).out, ['a', '', '</sx']);
  // A failed start can end in a new one: the first "ab" is released, the second held and then completed.
  assert.equal(run(['abc'], ['ab', 'ab', 'c']), { out: ['', 'ab', ''], end: '', stopped: true });
  assert.equal(run(['abab'], ['aba', 'c']), { out: ['', 'abac'], end: '', stopped: false });
});

test('text still held when generation ends comes out at the end', () => {
  assert.equal(run(['STOP'], ['x ST']), { out: ['x '], end: 'ST', stopped: false });
  const m = new StopMatcher(['STOP']);
  assert.is(m.push('x ST'), 'x ');
  assert.is(m.end('OP and more'), '', 'the last piece can complete a stop string');
  assert.ok(m.stopped);
});

test('of overlapping stop strings the earliest in the text wins', () => {
  assert.equal(run(['bcd', 'abcx'], ['abcd']).out, ['a']);
  assert.equal(run(['world', 'or'], ['hello world']).out, ['hello ']);
  assert.equal(run(['ab', 'b'], ['a', 'b']), { out: ['', ''], end: '', stopped: true });
  assert.equal(run(['b', 'ab'], ['xa', 'bc']).out, ['x', '']);
  // The longer candidate keeps text held while a shorter one is ruled out.
  assert.equal(run(['abcd', 'bce'], ['ab', 'c', 'e']).out, ['', '', 'a']);
});

test('after a stop nothing more comes out', () => {
  const m = new StopMatcher(['.']);
  assert.is(m.push('one. two'), 'one');
  assert.is(m.push('three'), '');
  assert.is(m.end('four'), '');
});

test('without stop strings text passes straight through', () => {
  assert.equal(run([], ['a', '', 'bc']), { out: ['a', '', 'bc'], end: '', stopped: false });
});

test('multi-byte characters and emoji stop strings', () => {
  assert.equal(run(['🙂'], ['héllo ', '🙂', ' après']), { out: ['héllo ', '', ''], end: '', stopped: true });
  assert.equal(run(['。终'], ['你好。', '终了']), { out: ['你好', ''], end: '', stopped: true });
});

test.run();
