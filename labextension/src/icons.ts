import { LabIcon } from '@jupyterlab/ui-components';

import frevaSvg from '../style/icons/freva-gpt.svg';
import thumbDownSvg from '../style/icons/thumb-down.svg';
import thumbUpSvg from '../style/icons/thumb-up.svg';

export const frevaIcon = new LabIcon({ name: 'freva-gpt-ext:icon', svgstr: frevaSvg });
export const thumbUpIcon = new LabIcon({ name: 'freva-gpt-ext:thumb-up', svgstr: thumbUpSvg });
export const thumbDownIcon = new LabIcon({ name: 'freva-gpt-ext:thumb-down', svgstr: thumbDownSvg });
